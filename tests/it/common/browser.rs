//! A headless chromium for the console's test and bench: chromedriver on a
//! free port (killed, with the browsers it started, on drop), and sessions
//! signed in to a commander's console.

use super::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// chromedriver on a free port.
pub struct Driver {
    child: std::process::Child,
    pub url: String,
}

impl Driver {
    pub async fn start() -> Driver {
        Driver::start_niced(0).await
    }

    /// chromedriver and its browsers at CPU priority `nice` (the bench's
    /// browsers stand for people on other machines: they get the CPU the
    /// fleet and its commander leave).
    pub async fn start_niced(nice: u8) -> Driver {
        let port = free_addr().rsplit(':').next().unwrap().to_string();
        let child = std::process::Command::new("nice")
            .args(["-n", &nice.to_string(), "chromedriver"])
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver on PATH (apt-get install chromium chromium-driver)");
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        wait_until(|| async { reqwest::get(&status).await.is_ok() }).await;
        Driver { child, url }
    }

    /// A new headless browser window (1366 x 900).
    pub async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--window-size=1366,900"]}),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // chromedriver and the chromium it started (a failed test never
        // closes its session, and chromium outlives chromedriver; its
        // renderers go with it).
        let _ = std::process::Command::new("pkill")
            .args(["-KILL", "-P", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The element at `css`, once the page has drawn it.
pub async fn find(c: &Client, css: &str) -> fantoccini::elements::Element {
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
}

/// Clicks the element at `css`, finding it again if the page redrew it
/// between finding and clicking (a live refresh: a stale element).
pub async fn click(c: &Client, css: &str) {
    for _ in 0..20 {
        match find(c, css).await.click().await {
            Ok(()) => return,
            Err(fantoccini::error::CmdError::Standard(e))
                if e.error == fantoccini::error::ErrorStatus::StaleElementReference => {}
            Err(e) => panic!("{css}: {e}"),
        }
    }
    panic!("{css}: stale 20 times");
}

/// Opens the console at `base` and signs in with `token`; returns once the
/// overview has drawn its tiles.
pub async fn sign_in(c: &Client, base: &str, token: &str) {
    c.goto(&format!("{base}/")).await.unwrap();
    find(c, "#token").await.send_keys(token).await.unwrap();
    find(c, "#sign-in").await.click().await.unwrap();
    find(c, "[data-pool=ui] .size").await;
}
