//! Real headless Chromium for the Billing page tests: chromedriver on a free port,
//! one Chromium with a fresh profile, screenshots at both widths, and helpers that
//! wait for what the page does (htmx swaps, redirects through the Stripe sandbox).
//!
//! A browser that cannot start fails the test with what to install; it never skips.

#![allow(dead_code)] // Each test binary uses a different part of the helper.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::common::TestServer;

/// How long a step may take before the test fails (the hosted page round trip included).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// The two widths every state is photographed at.
pub const WIDTHS: [u32; 2] = [1280, 390];

/// Chromium's own flags: headless, no sandbox (containers), nothing that phones home.
const CHROME_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
    // Phones overlay their scrollbars: 390 px of window is 390 px of layout.
    "--hide-scrollbars",
    "--lang=en-US",
];

fn find_binary(env: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Ok(path) = std::env::var(env) {
        return Some(PathBuf::from(path));
    }
    candidates.iter().map(PathBuf::from).find(|path| path.exists())
}

fn install_hint() -> &'static str {
    "the Billing page tests drive real headless Chromium: install it with \
     `apt-get update && apt-get install -y chromium chromium-driver` (scripts/test does this), \
     or point CHROMEDRIVER and CHROME_BIN at your own"
}

/// A free local port (bound, read, released: chromedriver takes it a moment later).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free local port");
    listener.local_addr().expect("local address").port()
}

/// Where screenshots go: `target/screenshots/` of the workspace this crate sits in
/// (`crates/web` → two levels up), whatever `CARGO_TARGET_DIR` says: the build cache
/// may live outside the clone (scripts/test puts it in `~/.cache`), but the pictures
/// belong with the checkout whose page they show. `/target` is git-ignored.
pub fn screenshot_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/web sits two levels below the workspace root");
    workspace.join("target").join("screenshots")
}

/// One headless Chromium driven through chromedriver.
pub struct Browser {
    pub client: Client,
    /// Width and height the window adds around the viewport.
    frame: std::sync::OnceLock<(u32, u32)>,
    driver: Child,
    _profile: tempfile::TempDir,
    log: PathBuf,
}

impl Browser {
    /// Starts chromedriver and Chromium; panics (never skips) when either cannot start.
    pub async fn start() -> Browser {
        let driver_path = find_binary(
            "CHROMEDRIVER",
            &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"],
        )
        .unwrap_or_else(|| panic!("chromedriver not found: {}", install_hint()));
        // Debian's /usr/bin/chromium is a wrapper script; the real binary sits beside the driver.
        let chrome_path = find_binary("CHROME_BIN", &["/usr/lib/chromium/chromium", "/usr/bin/chromium"])
            .unwrap_or_else(|| panic!("chromium not found: {}", install_hint()));
        let profile = tempfile::tempdir().expect("a profile directory");
        let log = profile.path().join("chromedriver.log");
        let port = free_port();
        let log_file = std::fs::File::create(&log).expect("chromedriver log file");
        let driver = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "chromedriver ({}) did not start: {error}; {}",
                    driver_path.display(),
                    install_hint()
                )
            });
        let url = format!("http://127.0.0.1:{port}");
        let mut browser = BrowserStart {
            driver: Some(driver),
            log: log.clone(),
        };
        browser.wait_until_ready(&url).await;
        let mut args: Vec<String> = CHROME_FLAGS.iter().map(|flag| (*flag).to_owned()).collect();
        args.push(format!(
            "--user-data-dir={}",
            profile.path().join("profile").display()
        ));
        args.push(format!("--window-size={},900", WIDTHS[0]));
        let mut capabilities = Capabilities::new();
        capabilities.insert("browserName".to_owned(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({"binary": chrome_path.display().to_string(), "args": args}),
        );
        // chromedriver speaks plain HTTP on 127.0.0.1: no TLS stack needed.
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = match ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&url)
            .await
        {
            Ok(client) => client,
            Err(error) => panic!(
                "headless Chromium did not start: {error}\nchromedriver log:\n{}\n{}",
                browser.log_tail(),
                install_hint()
            ),
        };
        let driver = browser.driver.take().expect("driver process");
        Browser {
            client,
            frame: std::sync::OnceLock::new(),
            driver,
            _profile: profile,
            log,
        }
    }

    /// Ends the session and the driver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|error| panic!("navigating to {url}: {error}"));
    }

    pub async fn url(&self) -> String {
        self.client.current_url().await.expect("current URL").to_string()
    }

    /// The element, once it exists.
    pub async fn find(&self, css: &str) -> Element {
        match self
            .client
            .wait()
            .at_most(STEP_TIMEOUT)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(element) => element,
            Err(error) => panic!(
                "`{css}` did not appear: {error}\non {}\n{}",
                self.url().await,
                self.body_text().await
            ),
        }
    }

    /// Whether the element exists now.
    pub async fn exists(&self, css: &str) -> bool {
        self.client.find(Locator::Css(css)).await.is_ok()
    }

    /// Runs `action` on the element, again if htmx replaced it in between (a stale
    /// reference), until it works or the step times out.
    async fn with_element<T, F, Fut>(&self, css: &str, what: &str, action: F) -> T
    where
        F: Fn(Element) -> Fut,
        Fut: std::future::Future<Output = Result<T, fantoccini::error::CmdError>>,
    {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let element = self.find(css).await;
            match action(element).await {
                Ok(value) => return value,
                Err(error) if Instant::now() < deadline && is_stale(&error) => {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
                Err(error) => panic!("{what} `{css}`: {error}"),
            }
        }
    }

    pub async fn click(&self, css: &str) {
        self.with_element(css, "clicking", |element| async move { element.click().await })
            .await;
    }

    pub async fn text(&self, css: &str) -> String {
        self.with_element(css, "reading", |element| async move { element.text().await })
            .await
    }

    pub async fn body_text(&self) -> String {
        match self.client.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Waits until `css` shows text containing `expected`.
    pub async fn wait_for_text(&self, css: &str, expected: &str) -> String {
        self.wait_for_text_where(css, &format!("{expected:?}"), |text| text.contains(expected))
            .await
    }

    /// Waits until `css` shows text for which `matches` holds (for an exact or empty
    /// text, which `wait_for_text` cannot wait for); returns it.
    pub async fn wait_for_text_where(&self, css: &str, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await
                && let Ok(text) = element.text().await
                && matches(&text)
            {
                return text;
            }
            if Instant::now() > deadline {
                panic!(
                    "`{css}` never showed {what} on {}; the page says:\n{}",
                    self.url().await,
                    self.body_text().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The rendered text of every element matching `css`, in document order, read in
    /// one script (so an htmx swap cannot land between two of them).
    pub async fn texts(&self, css: &str) -> Vec<String> {
        let value = self
            .client
            .execute(
                "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.innerText.trim());",
                vec![json!(css)],
            )
            .await
            .expect("script runs");
        serde_json::from_value(value).expect("a list of texts")
    }

    /// Waits until the current URL contains `part`.
    pub async fn wait_for_url(&self, part: &str) -> String {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let url = self.url().await;
            if url.contains(part) {
                return url;
            }
            if Instant::now() > deadline {
                panic!(
                    "never reached a URL with {part:?}; at {url}:\n{}",
                    self.body_text().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Replaces what a field holds (select all + delete works with any value).
    pub async fn type_into(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.expect("clearing a field");
        if !text.is_empty() {
            field.send_keys(text).await.expect("typing into a field");
        } else {
            // `clear` fires no input event; tell the page's validation it changed.
            self.client
                .execute(
                    "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));",
                    vec![serde_json::to_value(&field).expect("element as JSON")],
                )
                .await
                .expect("input event");
        }
    }

    /// Whether a control is disabled (the DOM property, not the attribute's text).
    pub async fn is_disabled(&self, css: &str) -> bool {
        !self
            .with_element(css, "reading the state of", |element| async move {
                element.is_enabled().await
            })
            .await
    }

    pub async fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.with_element(css, "reading an attribute of", |element| async move {
            element.attr(name).await
        })
        .await
    }

    /// Runs a script and returns its value.
    pub async fn script(&self, source: &str) -> Value {
        self.client.execute(source, vec![]).await.expect("script runs")
    }

    /// Makes the viewport (not the window around it) `width` × `height` CSS pixels.
    pub async fn set_viewport(&self, width: u32, height: u32) {
        let (extra_width, extra_height) = self.frame.get().copied().unwrap_or((0, 0));
        self.client
            .set_window_size(width + extra_width, height + extra_height)
            .await
            .expect("window size");
        if self.frame.get().is_none() {
            // Measured once: what the window adds around the viewport.
            let inner = self
                .script("return [window.innerWidth, window.innerHeight];")
                .await;
            let inner = |index: usize| inner[index].as_u64().and_then(|value| u32::try_from(value).ok());
            let frame = (
                width.saturating_sub(inner(0).unwrap_or(width)),
                height.saturating_sub(inner(1).unwrap_or(height)),
            );
            let _ = self.frame.set(frame);
            if frame != (0, 0) {
                self.client
                    .set_window_size(width + frame.0, height + frame.1)
                    .await
                    .expect("window size");
            }
        }
    }

    /// Screenshots of the whole page at every width, as `NAME-WIDTH.png` (the viewport
    /// is made as tall as the page).
    pub async fn screenshots(&self, name: &str) {
        self.capture(name, true).await;
    }

    /// Screenshots of what a screen shows (1280 × 900, 390 × 844) at every width: for
    /// dialogs, which sit in the middle of the screen.
    pub async fn screenshots_of_screen(&self, name: &str) {
        self.capture(name, false).await;
    }

    async fn capture(&self, name: &str, full_page: bool) {
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("screenshot directory");
        for width in WIDTHS {
            let screen_height = if width < 600 { 844 } else { 900 };
            self.set_viewport(width, screen_height).await;
            if full_page {
                self.script("window.scrollTo(0, 0);").await;
                let height = self
                    .script(
                        "return Math.max(document.documentElement.scrollHeight, document.body.scrollHeight);",
                    )
                    .await
                    .as_u64()
                    .and_then(|height| u32::try_from(height).ok())
                    .unwrap_or(screen_height)
                    .clamp(600, 8000);
                self.set_viewport(width, height).await;
            }
            let png = self.client.screenshot().await.expect("screenshot");
            std::fs::write(dir.join(format!("{name}-{width}.png")), png).expect("screenshot written");
        }
        self.set_viewport(WIDTHS[0], 900).await;
    }

    /// Whether the page is wider than the window (something does not fit at this width).
    pub async fn overflows_horizontally(&self) -> bool {
        self.script("return document.documentElement.scrollWidth > document.documentElement.clientWidth;")
            .await
            .as_bool()
            .unwrap_or(true)
    }

    /// Fills in the sandbox's hosted card page (expiring 12/34) and submits it.
    pub async fn enter_card(&self, number: &str) {
        self.enter_card_expiring(number, "12 / 34").await;
    }

    /// Fills in the sandbox's hosted card page with `expiry` (`MM / YY`) and submits it.
    pub async fn enter_card_expiring(&self, number: &str, expiry: &str) {
        self.find("#cardNumber").await;
        self.type_into("#cardNumber", number).await;
        self.type_into("#cardExpiry", expiry).await;
        self.type_into("#cardCvc", "123").await;
        self.type_into("#billingName", "Ada Lovelace").await;
        self.click("#submit").await;
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A panicking test never reaches `close`: the driver (and its Chromium) go anyway.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The driver while it starts: killed if starting fails.
struct BrowserStart {
    driver: Option<Child>,
    log: PathBuf,
}

impl BrowserStart {
    async fn wait_until_ready(&mut self, url: &str) {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("HTTP client");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(response) = client.get(format!("{url}/status")).send().await
                && response.status().is_success()
            {
                return;
            }
            if let Some(driver) = self.driver.as_mut()
                && let Ok(Some(status)) = driver.try_wait()
            {
                panic!(
                    "chromedriver exited with {status}:\n{}\n{}",
                    self.log_tail(),
                    install_hint()
                );
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer on {url}:\n{}\n{}",
                self.log_tail(),
                install_hint()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

impl Drop for BrowserStart {
    fn drop(&mut self) {
        if let Some(mut driver) = self.driver.take() {
            let _ = driver.kill();
            let _ = driver.wait();
        }
    }
}

fn is_stale(error: &fantoccini::error::CmdError) -> bool {
    matches!(error, fantoccini::error::CmdError::Standard(error)
        if error.error == fantoccini::error::ErrorStatus::StaleElementReference)
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A portal link to `account`'s page, made with the operator key.
pub async fn portal_link(server: &TestServer, account: &str) -> String {
    let (status, body) = server
        .post("/v1/portal_sessions", json!({"account_id": account}))
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
    let url = body["url"].as_str().expect("url");
    // A server without payments keeps the default public URL; the path is what matters.
    let path = &url[url.find("/portal/").expect("a portal path")..];
    server.url(path)
}
