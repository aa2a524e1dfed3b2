"""fleet_agent: agents for fleet-commander, in Python (asyncio, redis-py).

    import asyncio
    from fleet_agent import Agent, Credential

    agent = Agent("redis://127.0.0.1:6379", Credential.load("coder-1.cred"))

    @agent.task
    async def handle(task):
        return {"echo": task.payload}

    asyncio.run(agent.run())

``async with agent:`` connects and closes around ``run``; an agent takes a
``redis.asyncio.Redis`` in place of the URL. What the commander sends is
read into the dataclasses of ``fleet_agent.messages``.
"""
from . import messages
from .agent import Agent, RegistrationRefused, Task, connect_redis
from .signing import CommanderCheck, Credential, Exchange, Refused, Session, sign, signing_input, unframe

__all__ = [
    "Agent", "Task", "RegistrationRefused", "connect_redis", "Credential", "CommanderCheck", "Refused",
    "sign", "signing_input", "unframe", "messages", "Exchange", "Session",
]
