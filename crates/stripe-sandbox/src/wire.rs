//! Stripe's wire format: bracket-notation form parameters, error bodies and object ids.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::{Map, Value, json};

/// Most parameters a single request may carry; Stripe's own requests stay far below this.
const MAX_PAIRS: usize = 2_000;
/// Deepest bracket nesting accepted (`line_items[0][price_data][product_data][name]` is 4).
const MAX_DEPTH: usize = 6;
/// Stripe's metadata limits.
const MAX_METADATA_KEYS: usize = 50;
const MAX_METADATA_KEY_LEN: usize = 40;
const MAX_METADATA_VALUE_LEN: usize = 500;

/// A random Stripe-style id such as `cus_N4x…`.
pub(crate) fn new_id(prefix: &str, len: usize) -> String {
    let suffix: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect();
    format!("{prefix}_{suffix}")
}

/// Seconds since the Unix epoch, Stripe's timestamp unit.
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A Stripe API error: an HTTP status plus the body of `{"error": {...}}`.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) body: Map<String, Value>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &str, message: impl Into<String>) -> Self {
        let mut body = Map::new();
        body.insert("type".into(), Value::from(kind));
        body.insert("message".into(), Value::from(message.into()));
        ApiError { status, body }
    }

    /// 400 `invalid_request_error` without a code.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 400 `invalid_request_error` blaming one parameter.
    pub(crate) fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        Self::invalid(message).with("param", param)
    }

    /// 400 `parameter_missing`.
    pub(crate) fn missing_param(param: &str) -> Self {
        Self::invalid_param(param, format!("Missing required param: {param}."))
            .with("code", "parameter_missing")
    }

    /// 400 `parameter_unknown`, as Stripe answers any parameter it does not know.
    pub(crate) fn unknown_param(param: &str) -> Self {
        Self::invalid_param(param, format!("Received unknown parameter: {param}"))
            .with("code", "parameter_unknown")
    }

    /// `resource_missing`: 404 for an id in the path, 400 for an id given as a parameter.
    pub(crate) fn no_such(kind: &str, id: &str, param: Option<&str>) -> Self {
        let (status, param) = match param {
            Some(param) => (StatusCode::BAD_REQUEST, param),
            None => (StatusCode::NOT_FOUND, "id"),
        };
        Self::new(status, "invalid_request_error", format!("No such {kind}: '{id}'"))
            .with("code", "resource_missing")
            .with("param", param)
    }

    /// 500 `api_error`.
    pub(crate) fn api(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "api_error", message)
    }

    /// 401 for a missing or malformed secret key.
    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
    }

    /// 400 `idempotency_error`.
    pub(crate) fn idempotency(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "idempotency_error", message)
    }

    /// 402 `card_error`.
    pub(crate) fn card(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYMENT_REQUIRED, "card_error", message).with("code", code)
    }

    /// Sets one more field of the error body.
    pub(crate) fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.body.insert(key.into(), value.into());
        self
    }

    /// Overrides the HTTP status.
    pub(crate) fn status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// The full JSON document Stripe sends.
    pub(crate) fn to_json(&self) -> Value {
        json!({ "error": Value::Object(self.body.clone()) })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.to_json())).into_response()
    }
}

/// A node of the parameter tree built from bracket notation.
#[derive(Debug, Clone)]
enum Node {
    Leaf(String),
    Map(BTreeMap<String, Node>),
}

/// How a request changes an object's metadata.
#[derive(Debug, Clone)]
pub(crate) enum MetadataUpdate {
    /// `metadata=` (empty): remove every key.
    Clear,
    /// Keys to set; an empty value removes the key, as in Stripe.
    Merge(BTreeMap<String, String>),
}

impl MetadataUpdate {
    /// Applies the update to stored metadata, enforcing Stripe's size limits.
    pub(crate) fn apply(self, target: &mut BTreeMap<String, String>, param: &str) -> Result<(), ApiError> {
        match self {
            MetadataUpdate::Clear => target.clear(),
            MetadataUpdate::Merge(map) => {
                for (k, v) in map {
                    if v.is_empty() {
                        target.remove(&k);
                    } else {
                        target.insert(k, v);
                    }
                }
            }
        }
        if target.len() > MAX_METADATA_KEYS {
            return Err(ApiError::invalid_param(
                param,
                format!("Metadata can have up to {MAX_METADATA_KEYS} keys."),
            ));
        }
        Ok(())
    }

    /// Metadata of a newly created object.
    pub(crate) fn into_new(self, param: &str) -> Result<BTreeMap<String, String>, ApiError> {
        let mut map = BTreeMap::new();
        self.apply(&mut map, param)?;
        Ok(map)
    }
}

/// Request parameters in Stripe's bracket notation, remembering which ones a handler read so
/// that anything left over is rejected as `parameter_unknown`, like Stripe does.
#[derive(Debug)]
pub(crate) struct Params {
    root: BTreeMap<String, Node>,
    used: Vec<Vec<String>>,
}

/// Renders a parameter path the way Stripe names it in errors: `a[b][c]`.
pub(crate) fn display_path(path: &[impl AsRef<str>]) -> String {
    let mut out = String::new();
    for (i, seg) in path.iter().enumerate() {
        if i == 0 {
            out.push_str(seg.as_ref());
        } else {
            out.push('[');
            out.push_str(seg.as_ref());
            out.push(']');
        }
    }
    out
}

fn split_key(key: &str) -> Result<Vec<String>, ApiError> {
    let invalid = || ApiError::invalid(format!("Invalid parameter name: {key}"));
    let (head, mut rest) = match key.find('[') {
        Some(i) => (&key[..i], &key[i..]),
        None => (key, ""),
    };
    if head.is_empty() {
        return Err(invalid());
    }
    let mut segs = vec![head.to_string()];
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[').ok_or_else(invalid)?;
        let close = inner.find(']').ok_or_else(invalid)?;
        segs.push(inner[..close].to_string());
        rest = &inner[close + 1..];
    }
    if segs.len() > MAX_DEPTH {
        return Err(invalid());
    }
    Ok(segs)
}

fn insert(
    map: &mut BTreeMap<String, Node>,
    segs: &[String],
    value: String,
    key: &str,
) -> Result<(), ApiError> {
    let conflict = || ApiError::invalid(format!("Invalid parameter structure at {key}"));
    let Some((first, rest)) = segs.split_first() else {
        return Err(conflict());
    };
    // `[]` appends: number it after the existing entries so it reads like an indexed array.
    let seg = if first.is_empty() {
        map.len().to_string()
    } else {
        first.clone()
    };
    if rest.is_empty() {
        match map.get(&seg) {
            Some(Node::Map(_)) => return Err(conflict()),
            _ => {
                map.insert(seg, Node::Leaf(value));
            }
        }
        return Ok(());
    }
    // A trailing `[]` after an existing empty-string leaf (e.g. `expand=` then `expand[]=`) is
    // unusual enough to be treated as a conflict rather than guessed at.
    let child = map.entry(seg).or_insert_with(|| Node::Map(BTreeMap::new()));
    match child {
        Node::Map(m) => insert(m, rest, value, key),
        Node::Leaf(_) => Err(conflict()),
    }
}

impl Params {
    /// Parses `application/x-www-form-urlencoded` bytes (a body or a query string).
    pub(crate) fn parse(input: &[u8]) -> Result<Self, ApiError> {
        let mut root = BTreeMap::new();
        for (count, (k, v)) in form_urlencoded::parse(input).enumerate() {
            if count >= MAX_PAIRS {
                return Err(ApiError::invalid("Too many parameters in one request."));
            }
            let segs = split_key(&k)?;
            insert(&mut root, &segs, v.into_owned(), &k)?;
        }
        Ok(Params {
            root,
            used: Vec::new(),
        })
    }

    /// A canonical rendering of every parameter, used to compare idempotent replays.
    pub(crate) fn fingerprint(input: &[u8]) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = form_urlencoded::parse(input)
            .take(MAX_PAIRS)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        pairs.sort();
        pairs
    }

    fn lookup(&self, path: &[&str]) -> Option<&Node> {
        let (first, rest) = path.split_first()?;
        let mut node = self.root.get(*first)?;
        for seg in rest {
            match node {
                Node::Map(m) => node = m.get(*seg)?,
                Node::Leaf(_) => return None,
            }
        }
        Some(node)
    }

    fn mark(&mut self, path: &[&str]) {
        self.used.push(path.iter().map(|s| s.to_string()).collect());
    }

    /// Whether the parameter (or anything under it) was sent.
    pub(crate) fn has(&self, path: &[&str]) -> bool {
        self.lookup(path).is_some()
    }

    /// Whether the parameter was sent as a hash (`created[gte]=…`) rather than a value.
    pub(crate) fn is_hash(&self, path: &[&str]) -> bool {
        matches!(self.lookup(path), Some(Node::Map(_)))
    }

    /// A string parameter.
    pub(crate) fn str(&mut self, path: &[&str]) -> Result<Option<String>, ApiError> {
        self.mark(path);
        match self.lookup(path) {
            None => Ok(None),
            Some(Node::Leaf(s)) => Ok(Some(s.clone())),
            Some(Node::Map(_)) => Err(ApiError::invalid_param(
                &display_path(path),
                format!("Invalid string: {}", display_path(path)),
            )),
        }
    }

    /// A required, non-empty string parameter.
    pub(crate) fn req_str(&mut self, path: &[&str]) -> Result<String, ApiError> {
        match self.str(path)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(ApiError::missing_param(&display_path(path))),
        }
    }

    /// An integer parameter.
    pub(crate) fn int(&mut self, path: &[&str]) -> Result<Option<i64>, ApiError> {
        match self.str(path)? {
            None => Ok(None),
            Some(s) => {
                s.trim().parse::<i64>().map(Some).map_err(|_| {
                    ApiError::invalid_param(&display_path(path), format!("Invalid integer: {s}"))
                })
            }
        }
    }

    /// A boolean parameter (`true`/`false`).
    pub(crate) fn bool(&mut self, path: &[&str]) -> Result<Option<bool>, ApiError> {
        match self.str(path)?.as_deref() {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(other) => Err(ApiError::invalid_param(
                &display_path(path),
                format!("Invalid boolean: {other}"),
            )),
        }
    }

    /// The indices of an array parameter (`line_items[0]`, `line_items[1]`…), in order.
    pub(crate) fn indices(&mut self, path: &[&str]) -> Result<Vec<String>, ApiError> {
        match self.lookup(path) {
            None => Ok(Vec::new()),
            Some(Node::Leaf(s)) if s.is_empty() => {
                self.mark(path);
                Ok(Vec::new())
            }
            Some(Node::Leaf(_)) => Err(ApiError::invalid_param(
                &display_path(path),
                format!("Invalid array: {}", display_path(path)),
            )),
            Some(Node::Map(m)) => {
                let mut idx = Vec::with_capacity(m.len());
                for k in m.keys() {
                    let n: usize = k.parse().map_err(|_| {
                        ApiError::invalid_param(
                            &display_path(path),
                            format!("Invalid array: {}", display_path(path)),
                        )
                    })?;
                    idx.push((n, k.clone()));
                }
                idx.sort();
                Ok(idx.into_iter().map(|(_, k)| k).collect())
            }
        }
    }

    /// An array of strings (`expand[]=a`, `expand[0]=a`, or a single `expand=a`).
    pub(crate) fn str_list(&mut self, path: &[&str]) -> Result<Vec<String>, ApiError> {
        if let Some(Node::Leaf(s)) = self.lookup(path) {
            let s = s.clone();
            self.mark(path);
            return Ok(if s.is_empty() { Vec::new() } else { vec![s] });
        }
        let mut out = Vec::new();
        for i in self.indices(path)? {
            let mut item_path: Vec<&str> = path.to_vec();
            item_path.push(&i);
            if let Some(v) = self.str(&item_path)? {
                out.push(v);
            }
        }
        self.mark(path);
        Ok(out)
    }

    /// A metadata hash.
    pub(crate) fn metadata(&mut self, path: &[&str]) -> Result<Option<MetadataUpdate>, ApiError> {
        self.mark(path);
        let name = display_path(path);
        match self.lookup(path) {
            None => Ok(None),
            Some(Node::Leaf(s)) if s.is_empty() => Ok(Some(MetadataUpdate::Clear)),
            Some(Node::Leaf(_)) => Err(ApiError::invalid_param(&name, format!("Invalid hash: {name}"))),
            Some(Node::Map(m)) => {
                let mut out = BTreeMap::new();
                for (k, v) in m {
                    let Node::Leaf(v) = v else {
                        return Err(ApiError::invalid_param(
                            &format!("{name}[{k}]"),
                            "Metadata values must be strings.",
                        ));
                    };
                    if k.chars().count() > MAX_METADATA_KEY_LEN {
                        return Err(ApiError::invalid_param(
                            &format!("{name}[{k}]"),
                            format!("Metadata keys can be up to {MAX_METADATA_KEY_LEN} characters long."),
                        ));
                    }
                    if v.chars().count() > MAX_METADATA_VALUE_LEN {
                        return Err(ApiError::invalid_param(
                            &format!("{name}[{k}]"),
                            format!("Metadata values can be up to {MAX_METADATA_VALUE_LEN} characters long."),
                        ));
                    }
                    out.insert(k.clone(), v.clone());
                }
                Ok(Some(MetadataUpdate::Merge(out)))
            }
        }
    }

    /// Rejects whatever the handler did not read, naming the parameter like Stripe does.
    pub(crate) fn finish(self) -> Result<(), ApiError> {
        let mut stack: Vec<(Vec<String>, &Node)> = self
            .root
            .iter()
            .rev()
            .map(|(k, n)| (vec![k.clone()], n))
            .collect();
        while let Some((path, node)) = stack.pop() {
            let covered = self
                .used
                .iter()
                .any(|u| u.len() <= path.len() && path.starts_with(u));
            if covered {
                continue;
            }
            let touched = self
                .used
                .iter()
                .any(|u| u.len() > path.len() && u.starts_with(&path));
            match node {
                Node::Map(m) if touched => {
                    for (k, child) in m.iter().rev() {
                        let mut child_path = path.clone();
                        child_path.push(k.clone());
                        stack.push((child_path, child));
                    }
                }
                _ => return Err(ApiError::unknown_param(&display_path(&path))),
            }
        }
        Ok(())
    }
}

/// Validates the `limit` of a list request (Stripe: 1–100, default 10).
pub(crate) fn list_limit(params: &mut Params) -> Result<usize, ApiError> {
    match params.int(&["limit"])? {
        None => Ok(10),
        Some(n) if (1..=100).contains(&n) => Ok(usize::try_from(n).unwrap_or(10)),
        Some(n) => Err(ApiError::invalid_param(
            "limit",
            format!("Invalid limit: must be between 1 and 100 (got {n})."),
        )),
    }
}

/// Formats integer cents as `$12.34`-style text for messages and pages.
pub(crate) fn format_amount(cents: i64, currency: &str) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    let major = abs / 100;
    let minor = abs % 100;
    match currency {
        "usd" => format!("{sign}${major}.{minor:02}"),
        "eur" => format!("{sign}€{major}.{minor:02}"),
        "gbp" => format!("{sign}£{major}.{minor:02}"),
        other => format!("{sign}{major}.{minor:02} {}", other.to_uppercase()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_brackets_and_tracks_unknown() {
        let mut params = Params::parse(
            b"metadata[account_id]=acme&payment_method_types[0]=card&expand[]=a&expand[]=b&line_items[0][price_data][unit_amount]=2500&extra[x]=1",
        )
        .unwrap();
        let md = params.metadata(&["metadata"]).unwrap();
        assert!(matches!(md, Some(MetadataUpdate::Merge(m)) if m["account_id"] == "acme"));
        assert_eq!(params.str_list(&["payment_method_types"]).unwrap(), vec!["card"]);
        assert_eq!(params.str_list(&["expand"]).unwrap(), vec!["a", "b"]);
        assert_eq!(params.indices(&["line_items"]).unwrap(), vec!["0"]);
        assert_eq!(
            params
                .int(&["line_items", "0", "price_data", "unit_amount"])
                .unwrap(),
            Some(2500)
        );
        let err = params.finish().unwrap_err();
        assert_eq!(err.body["param"], "extra");
    }

    #[test]
    fn nested_unknown_is_named_at_its_level() {
        let mut params =
            Params::parse(b"payment_intent_data[setup_future_usage]=off_session&payment_intent_data[foo]=1")
                .unwrap();
        params
            .str(&["payment_intent_data", "setup_future_usage"])
            .unwrap();
        let err = params.finish().unwrap_err();
        assert_eq!(err.body["param"], "payment_intent_data[foo]");
        assert_eq!(err.body["code"], "parameter_unknown");
    }

    #[test]
    fn amounts_format_without_floats() {
        assert_eq!(format_amount(2500, "usd"), "$25.00");
        assert_eq!(format_amount(5, "usd"), "$0.05");
        assert_eq!(format_amount(123456, "cad"), "1234.56 CAD");
    }
}
