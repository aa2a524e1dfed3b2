//! Pages of the long lists (`GET /v1/agents`, `GET /v1/tasks`, `GET
//! /v1/scaling`, with their search, filters and sorting in their resources'
//! files): each answers `{total, offset, limit, items}` (`total`: how many
//! matched before the page was cut).

use serde::Serialize;
use std::collections::HashMap;

/// A page: at most this many items.
pub(super) const MAX_LIMIT: usize = 500;

/// `?limit=N`, within `1..=max` (`default` when absent or unreadable).
pub(super) fn limit(q: &HashMap<String, String>, default: usize, max: usize) -> usize {
    q.get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(default)
        .clamp(1, max)
}

/// One page of a list.
#[derive(Serialize)]
pub(super) struct Page<T> {
    total: usize,
    offset: usize,
    limit: usize,
    items: Vec<T>,
}

/// The page of `all` from `offset`, at most `limit` long.
pub(super) fn page<T>(mut all: Vec<T>, offset: usize, limit: usize) -> Page<T> {
    let total = all.len();
    let limit = limit.clamp(1, MAX_LIMIT);
    let items = if offset >= total {
        Vec::new()
    } else {
        all.truncate((offset + limit).min(total));
        all.split_off(offset)
    };
    Page {
        total,
        offset,
        limit,
        items,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pages_cut_where_asked() {
        let p = super::page((0..10).collect(), 3, 4);
        assert_eq!((p.total, p.items), (10, vec![3, 4, 5, 6]));
        let p = super::page((0..10).collect::<Vec<i32>>(), 12, 4);
        assert!(p.items.is_empty());
        let p = super::page((0..10).collect(), 8, 4);
        assert_eq!(p.items, vec![8, 9]);
    }
}
