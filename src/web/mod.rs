//! Server-rendered pages for holders: login, the consent page, pending
//! backchannel requests, showing a license, consents.
//!
//! Pages are plain HTML forms that work without JavaScript. Every value put
//! into a page goes through [`esc`]. Every form carries a CSRF token: an HMAC
//! (keyed from the master key) of the session it belongs to, or before login
//! of a random pre-session cookie, so a token is useless with any other
//! session. Responses carry a strict Content-Security-Policy (no script at
//! all, the one stylesheet by hash) and the usual security headers.
//! Chinese is the default language; `?lang=en` switches to English and is
//! remembered in a cookie.

pub mod console;
pub mod holder;
pub mod pages;

use std::sync::LazyLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::keys::{b64url, constant_time_eq, sha256, Sealer};

/// Session cookie name.
pub const SESSION_COOKIE: &str = "lg_session";
/// Pre-session cookie (CSRF binding of the login form).
pub const PRE_SESSION_COOKIE: &str = "lg_pre";
/// Language cookie.
pub const LANG_COOKIE: &str = "lg_lang";

/// The stylesheet of every page.
pub const STYLE: &str = "body{font-family:system-ui,'PingFang SC','Noto Sans CJK SC',sans-serif;max-width:44rem;margin:0 auto;padding:1rem;line-height:1.5;color:#1b1b1b}\
header{display:flex;justify-content:space-between;align-items:center;border-bottom:1px solid #ccc;margin-bottom:1rem}\
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.2rem}\
.card{border:1px solid #ccc;border-radius:6px;padding:.8rem;margin:.8rem 0}\
.warn{background:#fff4e5;border-color:#f0a040}.err{background:#fdecec;border-color:#d33}\
label{display:block;margin:.3rem 0}input[type=text],input[type=password]{width:100%;padding:.5rem;font-size:1rem;box-sizing:border-box}\
button{padding:.6rem 1.2rem;font-size:1rem;margin:.4rem .4rem 0 0}.primary{background:#1456c8;color:#fff;border:0;border-radius:4px}\
dt{font-weight:600}dd{margin:0 0 .4rem 0}code{word-break:break-all}table{border-collapse:collapse;width:100%;display:block;overflow-x:auto}td,th{border-bottom:1px solid #ddd;padding:.3rem;text-align:left}";

static STYLE_HASH: LazyLock<String> = LazyLock::new(|| {
    use base64::Engine;
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(sha256(STYLE))
    )
});

/// A page language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// 中文 (default).
    Zh,
    /// English.
    En,
}

impl Lang {
    /// From a `lang` parameter, else the cookie, else Chinese.
    pub fn pick(param: Option<&str>, headers: &HeaderMap) -> Self {
        match param.or_else(|| cookie(headers, LANG_COOKIE)) {
            Some("en") => Lang::En,
            _ => Lang::Zh,
        }
    }

    /// The text in this language.
    pub fn t<'a>(self, zh: &'a str, en: &'a str) -> &'a str {
        match self {
            Lang::Zh => zh,
            Lang::En => en,
        }
    }

    /// Its code.
    pub fn code(self) -> &'static str {
        match self {
            Lang::Zh => "zh",
            Lang::En => "en",
        }
    }
}

/// HTML-escapes text for element content and quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A hidden form field (name and value escaped).
pub fn hidden(name: &str, value: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
        esc(name),
        esc(value)
    )
}

/// A cookie's value from the request.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value: host-only, whole site, Secure, HttpOnly, SameSite=Lax
/// (Lax so that the session reaches `/authorize` when an entity's site sends
/// the browser there; every state change is a POST with a CSRF token).
pub fn set_cookie(name: &str, value: &str, max_age: i64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Lax"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("invalid=1; Max-Age=0"))
}

/// The pre-session that binds a login form's CSRF token before there is a
/// session: the browser's `lg_pre` cookie, or a new one to set.
pub struct PreSession {
    /// Its id.
    pub id: String,
    new: bool,
}

impl PreSession {
    /// The request's pre-session, or a fresh one.
    pub fn of(headers: &HeaderMap) -> crate::error::Result<Self> {
        Ok(match cookie(headers, PRE_SESSION_COOKIE) {
            Some(p) if p.len() >= 32 => PreSession {
                id: p.to_owned(),
                new: false,
            },
            _ => PreSession {
                id: crate::keys::random_token(32)?,
                new: true,
            },
        })
    }

    /// Sets the cookie on `res` when the pre-session is new.
    pub fn attach(&self, mut res: Response) -> Response {
        if self.new {
            res.headers_mut().append(
                header::SET_COOKIE,
                set_cookie(PRE_SESSION_COOKIE, &self.id, 3600),
            );
        }
        res
    }
}

/// The CSRF token of forms bound to `binding` (a session or pre-session id).
pub fn csrf_token(sealer: &Sealer, binding: &str) -> String {
    b64url(sealer.lookup_digest("csrf", binding))
}

/// Whether `token` is the CSRF token for `binding` (constant time).
pub fn csrf_ok(sealer: &Sealer, binding: &str, token: &str) -> bool {
    constant_time_eq(csrf_token(sealer, binding).as_bytes(), token.as_bytes())
}

/// A whole page.
pub struct Page {
    /// Language.
    pub lang: Lang,
    /// Title.
    pub title: String,
    /// Body HTML (already escaped where needed).
    pub body: String,
    /// Origins forms may post to besides this server (a redirect after a form
    /// post is checked against `form-action` by browsers).
    pub form_targets: Vec<String>,
    /// Status.
    pub status: StatusCode,
}

impl Page {
    /// A 200 page.
    pub fn new(lang: Lang, title: impl Into<String>, body: String) -> Self {
        Page {
            lang,
            title: title.into(),
            body,
            form_targets: Vec::new(),
            status: StatusCode::OK,
        }
    }

    /// An error page shown to the holder (never a redirect).
    pub fn error(lang: Lang, status: StatusCode, message: &str) -> Self {
        let body = format!(
            "<div class=\"card err\" role=\"alert\"><h1>{}</h1><p>{}</p></div>",
            lang.t("无法完成请求", "The request cannot be completed"),
            esc(message)
        );
        let mut p = Page::new(lang, lang.t("错误", "Error"), body);
        p.status = status;
        p
    }
}

/// The origin (scheme://host[:port]) of a URL, for `form-action`.
pub fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    (!host.is_empty() && !host.contains(['\'', ' ', ';'])).then(|| format!("{scheme}://{host}"))
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let other = if self.lang == Lang::Zh { "en" } else { "zh" };
        let html = format!(
            "<!doctype html><html lang=\"{lang}\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{title} · licensegate</title><style>{STYLE}</style></head><body>\
             <header><strong>{brand}</strong><a href=\"?lang={other}\">{switch}</a></header>\
             <main>{body}</main></body></html>",
            lang = if self.lang == Lang::Zh { "zh-CN" } else { "en" },
            title = esc(&self.title),
            brand = self.lang.t("电子证照授权服务", "E-license authorization"),
            switch = self.lang.t("English", "中文"),
            body = self.body,
        );
        let mut form_action = String::from("'self'");
        for t in &self.form_targets {
            form_action.push(' ');
            form_action.push_str(t);
        }
        let csp = format!(
            "default-src 'none'; style-src {}; img-src 'self' data:; form-action {form_action}; frame-ancestors 'none'; base-uri 'none'",
            *STYLE_HASH
        );
        let mut res = (self.status, html).into_response();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        if let Ok(v) = HeaderValue::from_str(&csp) {
            h.insert(header::CONTENT_SECURITY_POLICY, v);
        }
        security_headers(h);
        res
    }
}

/// Headers every page and form answer carries.
pub fn security_headers(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
}

/// A 303 See Other to `location`, with extra cookies.
pub fn see_other(location: &str, cookies: &[HeaderValue]) -> Response {
    let mut res = StatusCode::SEE_OTHER.into_response();
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(location) {
        h.insert(header::LOCATION, v);
    }
    for c in cookies {
        h.append(header::SET_COOKIE, c.clone());
    }
    security_headers(h);
    res
}

/// A same-site path to return to after login: relative, never `//host`.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_owned(),
        _ => "/holder/consents".to_owned(),
    }
}

/// Form fields, repeated names allowed (checkbox groups).
pub fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// The single value of a form field.
pub fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}
