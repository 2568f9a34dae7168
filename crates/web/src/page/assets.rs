//! The page's static files, embedded in the binary and served under `/static/`.
//!
//! Each URL carries a hash of the file's bytes, so a file can be cached for a year
//! (`immutable`) and a new build still reaches every browser at once: its URL changes.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// The vendored htmx build (see `static/README.md`).
const HTMX_FILE: &str = "htmx-2.0.11.min.js";

/// One embedded file.
struct Asset {
    /// The name the templates ask for.
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: HTMX_FILE,
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../static/htmx-2.0.11.min.js"),
    },
    Asset {
        name: "billing.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../static/billing.js"),
    },
    Asset {
        name: "billing.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../static/billing.css"),
    },
];

/// The URLs of the page's files, as the templates link them.
#[derive(Debug)]
pub(crate) struct AssetUrls {
    /// htmx.
    pub htmx: String,
    /// The page's script.
    pub script: String,
    /// The page's styles.
    pub styles: String,
}

/// `name` with the first 16 hex digits of its SHA-256 before the extension.
fn hashed_name(asset: &Asset) -> String {
    let digest = hex::encode(Sha256::digest(asset.bytes));
    let (stem, extension) = asset.name.rsplit_once('.').unwrap_or((asset.name, ""));
    format!("{stem}.{}.{extension}", &digest[..16])
}

fn hashed_names() -> &'static [(String, &'static Asset)] {
    static NAMES: OnceLock<Vec<(String, &'static Asset)>> = OnceLock::new();
    NAMES.get_or_init(|| ASSETS.iter().map(|asset| (hashed_name(asset), asset)).collect())
}

fn url_of(name: &str) -> String {
    let hashed = hashed_names()
        .iter()
        .find(|(_, asset)| asset.name == name)
        .map_or(name, |(hashed, _)| hashed.as_str());
    format!("/static/{hashed}")
}

/// The URLs of every file, computed once.
pub(crate) fn urls() -> &'static AssetUrls {
    static URLS: OnceLock<AssetUrls> = OnceLock::new();
    URLS.get_or_init(|| AssetUrls {
        htmx: url_of(HTMX_FILE),
        script: url_of("billing.js"),
        styles: url_of("billing.css"),
    })
}

/// `GET /static/{file}`: only the hashed names are served, so a stale name is a 404
/// rather than a year-long cache entry of the wrong bytes.
pub(crate) async fn serve(Path(file): Path<String>) -> Response {
    let Some((_, asset)) = hashed_names().iter().find(|(hashed, _)| *hashed == file) else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        asset.bytes,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_carry_a_content_hash() {
        let urls = urls();
        assert!(urls.htmx.starts_with("/static/htmx-2.0.11.min."), "{}", urls.htmx);
        assert!(urls.htmx.ends_with(".js"));
        assert!(urls.styles.ends_with(".css"));
        assert_eq!(urls.script.len(), "/static/billing..js".len() + 16);
    }
}
