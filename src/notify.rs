//! Notifications to holders (and entities): what is queued, how holders
//! choose what they get, and the delivery worker.
//!
//! Notifications are queued in an outbox table in the same commit as the
//! audit record they tell about (a read, a consent granted or revoked, an
//! objection answered) or by the daily reminder job (licenses expiring in 30,
//! 7 and 1 days; consents that expired; every 90 days of a long-lived
//! consent), whose entries carry a dedupe key so that a second run queues
//! nothing twice. The worker moves each queued notification on: suppressed
//! when the holder turned its kind off, otherwise one delivery per active
//! webhook endpoint subscribed to it. Deliveries are POSTed with the
//! Standard Webhooks headers (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,<base64 HMAC-SHA256>` over `id.timestamp.body`),
//! retried with exponential backoff and, after the last attempt, left dead
//! for an operator to see and retry. Several nodes may run the worker: each
//! delivery is leased before it is sent.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::app::Services;
use crate::consent::{unix_to_rfc3339, ConsentView};
use crate::error::{Error, Result};
use crate::keys::{random_bytes, random_token};
use crate::store::consent::ConsentRow;
use crate::store::notify::{DeliveryRow, Dispatch, EndpointRow, NotificationRow};
use crate::store::{date_string, now, timestamp};

/// Kinds of notification a holder can turn on or off, with their names.
pub const HOLDER_KINDS: [(&str, &str, &str); 8] = [
    (
        "license.retrieved",
        "我的证照被读取",
        "A license of mine was read",
    ),
    (
        "license.verified",
        "我的证照被核验",
        "A license of mine was verified",
    ),
    ("consent.granted", "授权回执", "Receipt of a consent I gave"),
    (
        "consent.revoked",
        "撤回授权回执",
        "Receipt of a consent withdrawn",
    ),
    ("consent.expired", "授权到期", "A consent ended"),
    (
        "consent.reminder",
        "长期授权提醒（每 90 天）",
        "Reminder of a long-lived consent (every 90 days)",
    ),
    (
        "license.expiring",
        "证照到期提醒（30、7、1 天）",
        "License expiry reminder (30, 7 and 1 days)",
    ),
    (
        "objection.updated",
        "异议处理进展",
        "Progress of my objections",
    ),
];

/// Days before the end of validity when holders are reminded.
pub const EXPIRY_REMINDER_DAYS: [i64; 3] = [30, 7, 1];
/// A long-lived consent is recalled to its holder this often.
pub const CONSENT_REMINDER_DAYS: i64 = 90;
/// How long a worker holds a delivery it is sending.
const LEASE_SECONDS: i64 = 60;
/// Notifications moved on per transaction by [`dispatch_queued`].
const DISPATCH_CHUNK: usize = 100;
/// Queued notifications read at a time by [`dispatch_queued`].
const DISPATCH_READ: i64 = 500;
/// At most this many read per round, so that a round still sends its
/// deliveries when notifications arrive faster than it moves them.
const DISPATCH_ROUND: usize = 100_000;

/// Deliveries sent per worker round.
const ROUND: i64 = 100;

/// An outbox id (notifications, deliveries): `prefix`, the time in
/// milliseconds (12 hex digits), then 12 random bytes, so that ids taken one
/// after another sort one after another and their primary-key index grows at
/// its end. With random ids every notification queued in a retrieval's group
/// commit landed on a page of its own in that index, and the commit wrote
/// each of those pages to the WAL (`vmstat`: 70 MB/s written at 4,400
/// retrievals/s).
fn outbox_id(prefix: &str) -> Result<String> {
    let millis = crate::store::unix_millis(now()).max(0);
    Ok(format!("{prefix}_{millis:012x}{}", random_token(12)?))
}

fn ntf_id() -> Result<String> {
    outbox_id("ntf")
}

/// A notification to a `holder` or an `entity`, to queue in the commit of
/// the record it tells about (see [`crate::audit::Guarded::notify`]).
pub fn queue(
    recipient_kind: &str,
    recipient_id: &str,
    kind: &str,
    payload: &impl serde::Serialize,
) -> Result<NotificationRow> {
    Ok(NotificationRow {
        id: ntf_id()?,
        recipient_kind: recipient_kind.to_owned(),
        recipient_id: recipient_id.to_owned(),
        kind: kind.to_owned(),
        payload: serde_json::to_string(payload).map_err(Error::internal)?,
        status: "queued".to_owned(),
        created_at: timestamp(now()),
    })
}

/// A consent notice (granted, revoked, expired, reminder): who may read what,
/// why, until when, how many times, and how to withdraw.
pub async fn consent_notice(services: &Services, c: &ConsentRow) -> Result<Value> {
    let entity = services.store.entity(&c.client_id).await?;
    let base = services.config.public_url.trim_end_matches('/');
    Ok(json!({
        "consent": ConsentView::of(c)?,
        "entity": entity.map(|e| json!({"id": e.id, "name": e.name, "sector": e.sector, "uscc": e.uscc})),
        "withdraw": format!("{base}/holder/consents"),
    }))
}

/// A consent notice to its holder, to queue with its record.
pub async fn consent_notification(
    services: &Services,
    c: &ConsentRow,
    kind: &str,
) -> Result<NotificationRow> {
    queue(
        "holder",
        &c.holder_id,
        kind,
        &consent_notice(services, c).await?,
    )
}

/// A holder's choices: every kind with whether it is on.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Preference {
    /// Notification kind.
    pub kind: String,
    /// Whether the holder gets it.
    pub enabled: bool,
}

/// A holder's notification preferences.
pub async fn preferences(services: &Services, holder_id: &str) -> Result<Vec<Preference>> {
    let off = services.store.disabled_kinds(holder_id).await?;
    Ok(HOLDER_KINDS
        .iter()
        .map(|(k, _, _)| Preference {
            kind: (*k).to_owned(),
            enabled: !off.iter().any(|o| o == k),
        })
        .collect())
}

/// Sets a holder's preferences (kinds not named keep their setting).
pub async fn set_preferences(
    services: &Services,
    holder_id: &str,
    prefs: &[Preference],
) -> Result<()> {
    for p in prefs {
        if !HOLDER_KINDS.iter().any(|(k, _, _)| *k == p.kind) {
            return Err(Error::invalid_field(
                "kind",
                format!("unknown notification kind {:?}", p.kind),
            ));
        }
    }
    for p in prefs {
        services
            .store
            .set_preference(holder_id, &p.kind, p.enabled)
            .await?;
    }
    Ok(())
}

/// A webhook endpoint as operators see it (never its secret).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EndpointView {
    /// Id.
    pub id: String,
    /// Where deliveries go.
    pub url: String,
    /// holder, entity or all.
    pub recipients: String,
    /// Kinds it receives (empty: all).
    pub kinds: Vec<String>,
    /// Whether it receives deliveries.
    pub active: bool,
    /// Registered at.
    pub created_at: String,
}

impl EndpointView {
    fn of(e: &EndpointRow) -> Self {
        EndpointView {
            id: e.id.clone(),
            url: e.url.clone(),
            recipients: e.recipients.clone(),
            kinds: serde_json::from_str(&e.kinds).unwrap_or_default(),
            active: e.active,
            created_at: e.created_at.clone(),
        }
    }
}

/// A new endpoint.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEndpoint {
    /// https URL (http only on loopback, for tests and local gateways).
    pub url: String,
    /// holder (default), entity or all.
    #[serde(default)]
    pub recipients: Option<String>,
    /// Kinds to receive; empty or absent for all.
    #[serde(default)]
    pub kinds: Vec<String>,
}

/// A registered endpoint with its signing secret (shown once).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RegisteredEndpoint {
    /// The endpoint.
    #[serde(flatten)]
    pub endpoint: EndpointView,
    /// `whsec_` + base64 of the HMAC key (Standard Webhooks); shown only now.
    pub secret: String,
}

/// A webhook URL: the rule of redirect and JWKS URIs (https, or http on
/// loopback), with a host and no whitespace or control characters.
fn url_allowed(url: &str) -> bool {
    crate::oauth::client_auth::is_https_or_loopback(url)
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
        && url
            .split_once("://")
            .is_some_and(|(_, rest)| !rest.is_empty() && !rest.starts_with(['/', '?', '#']))
}

/// Registers a webhook endpoint (operators).
pub async fn register_endpoint(
    services: &Services,
    req: NewEndpoint,
) -> Result<RegisteredEndpoint> {
    use base64::Engine;
    if !url_allowed(&req.url) {
        return Err(Error::invalid_field(
            "url",
            "must be an https URL (http only on loopback)",
        ));
    }
    let recipients = req.recipients.unwrap_or_else(|| "holder".into());
    if !matches!(recipients.as_str(), "holder" | "entity" | "all") {
        return Err(Error::invalid_field(
            "recipients",
            "must be holder, entity or all",
        ));
    }
    for k in &req.kinds {
        if !HOLDER_KINDS.iter().any(|(h, _, _)| h == k) && k != "objection.updated" {
            return Err(Error::invalid_field("kinds", format!("unknown kind {k:?}")));
        }
    }
    let id = format!("whk_{}", random_token(9)?);
    let key = random_bytes(32)?;
    let row = EndpointRow {
        id: id.clone(),
        url: req.url,
        recipients,
        kinds: serde_json::to_string(&req.kinds).map_err(Error::internal)?,
        secret: services.sealer.seal(&format!("webhook:{id}"), &key)?,
        active: true,
        created_at: timestamp(now()),
    };
    services.store.insert_endpoint(&row).await?;
    Ok(RegisteredEndpoint {
        endpoint: EndpointView::of(&row),
        secret: format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(&key)
        ),
    })
}

/// Every endpoint.
pub async fn endpoints(services: &Services) -> Result<Vec<EndpointView>> {
    Ok(services
        .store
        .endpoints()
        .await?
        .iter()
        .map(EndpointView::of)
        .collect())
}

/// The Standard Webhooks signature of a delivery: `v1,` + base64 of
/// HMAC-SHA256(key, `id.timestamp.body`).
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &str) -> String {
    use base64::Engine;
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let tag = ring::hmac::sign(&k, format!("{id}.{timestamp}.{body}").as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    )
}

/// A delivery as operators see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeliveryView {
    /// Id.
    pub id: String,
    /// pending, delivered or dead.
    pub status: String,
    /// Attempts made.
    pub attempts: i64,
    /// Next attempt (RFC 3339), while pending.
    pub next_attempt_at: Option<String>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was delivered.
    pub delivered_at: Option<String>,
    /// The notification's id (the `webhook-id`).
    pub notification: String,
    /// Its kind.
    pub kind: String,
    /// The endpoint.
    pub endpoint: String,
}

impl DeliveryView {
    /// The operator's view of a delivery.
    pub fn of(d: &DeliveryRow) -> Self {
        DeliveryView {
            id: d.id.clone(),
            status: d.status.clone(),
            attempts: d.attempts,
            next_attempt_at: (d.status == "pending").then(|| unix_to_rfc3339(d.next_attempt_at)),
            last_error: d.last_error.clone(),
            delivered_at: d.delivered_at.clone(),
            notification: d.notification.id.clone(),
            kind: d.notification.kind.clone(),
            endpoint: d.endpoint_id.clone(),
        }
    }
}

/// Whether endpoint `e`, whose subscribed kinds are `kinds` (none: all),
/// takes notification `n`.
fn subscribed(e: &EndpointRow, kinds: &[String], n: &NotificationRow) -> bool {
    e.active
        && (e.recipients == "all" || e.recipients == n.recipient_kind)
        && (kinds.is_empty() || kinds.contains(&n.kind))
}

/// Moves queued notifications on, oldest first: suppressed, or one delivery
/// per subscribed endpoint; until none is left or [`DISPATCH_ROUND`] were
/// read. Returns how many were moved.
///
/// Every retrieval queues one, so under load thousands arrive each second;
/// a round that moved a fixed 500 (as it once did) fell behind for good.
pub async fn dispatch_queued(services: &Services) -> Result<usize> {
    let endpoints: Vec<(EndpointRow, Vec<String>)> = services
        .store
        .endpoints()
        .await?
        .into_iter()
        .map(|e| {
            let kinds = serde_json::from_str(&e.kinds).unwrap_or_default();
            (e, kinds)
        })
        .collect();
    let (t, at) = (now().unix_timestamp(), timestamp(now()));
    // Each holder's preferences read once a round.
    let mut disabled: HashMap<String, Vec<String>> = HashMap::new();
    let (mut read, mut moved) = (0, 0);
    while read < DISPATCH_ROUND {
        let queued = services.store.queued_notifications(DISPATCH_READ).await?;
        let last = queued.len() < DISPATCH_READ as usize;
        read += queued.len();
        let mut moves = Vec::with_capacity(queued.len());
        for n in queued {
            moves.push(route(services, n, &endpoints, &mut disabled).await?);
        }
        // Transactions of a hundred: the log's appends wait for none for long.
        let mut now_moved = 0;
        for chunk in moves.chunks(DISPATCH_CHUNK) {
            now_moved += services.store.dispatch_all(chunk, t, &at).await?;
        }
        moved += now_moved;
        // Done, or what is left is being moved by another worker.
        if last || now_moved == 0 {
            break;
        }
    }
    Ok(moved)
}

/// Where one queued notification goes: suppressed when its holder turned
/// its kind off (`disabled`: the holders' preferences read so far this
/// round), else one delivery per subscribed endpoint.
async fn route(
    services: &Services,
    n: NotificationRow,
    endpoints: &[(EndpointRow, Vec<String>)],
    disabled: &mut HashMap<String, Vec<String>>,
) -> Result<Dispatch> {
    let off = if n.recipient_kind == "holder" {
        if !disabled.contains_key(&n.recipient_id) {
            let kinds = services.store.disabled_kinds(&n.recipient_id).await?;
            disabled.insert(n.recipient_id.clone(), kinds);
        }
        disabled[&n.recipient_id].contains(&n.kind)
    } else {
        false
    };
    let deliveries = if off {
        Vec::new()
    } else {
        endpoints
            .iter()
            .filter(|(e, kinds)| subscribed(e, kinds, &n))
            .map(|(e, _)| Ok((e.id.clone(), outbox_id("dlv")?)))
            .collect::<Result<Vec<_>>>()?
    };
    Ok(Dispatch {
        notification_id: n.id,
        status: if off { "suppressed" } else { "dispatched" },
        deliveries,
    })
}

/// What one delivery round did.
#[derive(Debug, Clone, Copy, Default, Serialize, ToSchema, PartialEq, Eq)]
pub struct DeliveryRound {
    /// Notifications moved out of the queue.
    pub dispatched: usize,
    /// Deliveries that succeeded.
    pub delivered: usize,
    /// Attempts that failed (to be retried).
    pub failed: usize,
    /// Deliveries that failed their last attempt.
    pub dead: usize,
}

/// The HTTP client of deliveries: no redirects, short timeouts.
pub fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(Error::internal)
}

async fn send(
    services: &Services,
    http: &reqwest::Client,
    d: &DeliveryRow,
) -> std::result::Result<(), String> {
    let key = services
        .sealer
        .open(&format!("webhook:{}", d.endpoint_id), &d.secret)
        .map_err(|_| "the endpoint's secret cannot be opened".to_owned())?;
    let ts = now().unix_timestamp();
    let payload: Value = serde_json::from_str(&d.notification.payload).unwrap_or(Value::Null);
    let body = json!({
        "type": d.notification.kind,
        "timestamp": timestamp(now()),
        "data": {
            "id": d.notification.id,
            "recipient": {"kind": d.notification.recipient_kind, "id": d.notification.recipient_id},
            "queued_at": d.notification.created_at,
            "content": payload,
        },
    })
    .to_string();
    let res = http
        .post(&d.url)
        .header("content-type", "application/json")
        .header("webhook-id", &d.notification.id)
        .header("webhook-timestamp", ts.to_string())
        .header(
            "webhook-signature",
            signature(&key, &d.notification.id, ts, &body),
        )
        .body(body)
        .send()
        .await
        .map_err(|e| format!("request failed: {}", without_url(&e)))?;
    if res.status().is_success() {
        Ok(())
    } else {
        Err(format!("the endpoint answered {}", res.status().as_u16()))
    }
}

fn without_url(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "could not connect".into()
    } else {
        "transport error".into()
    }
}

/// The delay before retry number `attempt` (1 = the first retry): the base,
/// doubled each time, at most an hour.
pub fn backoff(base: u64, attempt: i64) -> i64 {
    let exp = u32::try_from(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(20);
    i64::try_from(base.saturating_mul(1u64 << exp))
        .unwrap_or(i64::MAX)
        .min(3600)
}

/// One round of the worker: dispatch what is queued, send what is due.
pub async fn deliver_round(services: &Services, http: &reqwest::Client) -> Result<DeliveryRound> {
    let mut round = DeliveryRound {
        dispatched: dispatch_queued(services).await?,
        ..Default::default()
    };
    let due = services
        .store
        .claim_deliveries(now().unix_timestamp(), LEASE_SECONDS, ROUND)
        .await?;
    let max = i64::from(services.config.webhook_max_attempts);
    for d in due {
        match send(services, http, &d).await {
            Ok(()) => {
                services.store.delivered(&d.id, &timestamp(now())).await?;
                round.delivered += 1;
            }
            Err(why) => {
                let attempts = d.attempts + 1;
                let dead = attempts >= max;
                let next =
                    now().unix_timestamp() + backoff(services.config.webhook_retry_base, attempts);
                services
                    .store
                    .delivery_failed(&d.id, &why, next, dead)
                    .await?;
                tracing::warn!(delivery = %d.id, endpoint = %d.endpoint_id, attempts, dead, error = %why, "webhook delivery failed");
                if dead {
                    round.dead += 1;
                } else {
                    round.failed += 1;
                }
            }
        }
    }
    Ok(round)
}

/// The delivery worker: a round every `notify_interval` seconds.
pub async fn worker(services: crate::app::AppState) {
    let http = match http_client() {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "the notification worker cannot start");
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs(services.config.notify_interval));
    loop {
        tick.tick().await;
        if let Err(e) = deliver_round(&services, &http).await {
            tracing::warn!(error = %e, "a notification round failed");
        }
    }
}

/// What one run of the reminder job queued.
#[derive(Debug, Clone, Copy, Default, Serialize, ToSchema, PartialEq, Eq)]
pub struct ReminderRun {
    /// License expiry reminders.
    pub license_expiring: usize,
    /// Notices of consents that ended.
    pub consent_expired: usize,
    /// 90-day reminders of long-lived consents.
    pub consent_reminders: usize,
}

/// The daily job: licenses nearing expiry, consents that ended, and the
/// 90-day reminders. Safe to run any number of times a day: each notice has
/// a dedupe key.
pub async fn run_reminders(services: &Services) -> Result<ReminderRun> {
    let mut run = ReminderRun::default();
    let t = now();
    let today = crate::licenses::today();
    let horizon = today.saturating_add(time::Duration::days(EXPIRY_REMINDER_DAYS[0]));
    for l in services
        .store
        .licenses_ending(&date_string(today), &date_string(horizon))
        .await?
    {
        let Some(until) = l.valid_until.as_deref() else {
            continue;
        };
        let days_left = (crate::store::parse_date(until)? - today).whole_days();
        // The nearest threshold reached: a job that missed a day still sends
        // the 7-day reminder, never the 30-day one late.
        let Some(threshold) = EXPIRY_REMINDER_DAYS
            .iter()
            .rev()
            .find(|d| days_left <= **d)
            .copied()
        else {
            continue;
        };
        let ty = services.library.license_type(&l.license_type).await?;
        let identifier = services.library.current_identifier_of(&l)?;
        let payload = json!({
            "license": identifier,
            "license_type": l.license_type,
            "name": ty.spec.name,
            "name_en": ty.spec.name_en,
            "valid_until": until,
            "days_left": days_left,
            "threshold_days": threshold,
        });
        let n = NotificationRow {
            id: ntf_id()?,
            recipient_kind: "holder".into(),
            recipient_id: l.holder_id.clone(),
            kind: "license.expiring".into(),
            payload: payload.to_string(),
            status: "queued".into(),
            created_at: timestamp(t),
        };
        let key = format!(
            "license.expiring:{}:{}:{until}:{threshold}",
            l.id, l.current_version
        );
        if services.store.queue_once(&n, &key).await? {
            run.license_expiring += 1;
        }
    }
    let now_unix = t.unix_timestamp();
    let period = CONSENT_REMINDER_DAYS * 86_400;
    let created_before = timestamp(t - time::Duration::days(CONSENT_REMINDER_DAYS));
    for c in services
        .store
        .consents_to_remind(now_unix - 30 * 86_400, now_unix, &created_before)
        .await?
    {
        let (kind, key) = if c.expires_at <= now_unix {
            ("consent.expired", format!("consent.expired:{}", c.id))
        } else {
            let granted = crate::store::parse_timestamp(&c.created_at)?.unix_timestamp();
            let n = (now_unix - granted) / period;
            if n < 1 {
                continue;
            }
            ("consent.reminder", format!("consent.reminder:{}:{n}", c.id))
        };
        let n = NotificationRow {
            id: ntf_id()?,
            recipient_kind: "holder".into(),
            recipient_id: c.holder_id.clone(),
            kind: kind.into(),
            payload: consent_notice(services, &c).await?.to_string(),
            status: "queued".into(),
            created_at: timestamp(t),
        };
        if services.store.queue_once(&n, &key).await? {
            if kind == "consent.expired" {
                run.consent_expired += 1;
            } else {
                run.consent_reminders += 1;
            }
        }
    }
    Ok(run)
}

/// Runs the reminder job once a day (and once shortly after start).
pub async fn daily(services: crate::app::AppState) {
    tokio::time::sleep(Duration::from_secs(30)).await;
    let mut tick = tokio::time::interval(Duration::from_secs(86_400));
    loop {
        tick.tick().await;
        match run_reminders(&services).await {
            Ok(r) => tracing::info!(?r, "reminder job ran"),
            Err(e) => tracing::warn!(error = %e, "the reminder job failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_ids_sort_in_the_order_they_were_taken() {
        let mut ids = Vec::new();
        for _ in 0..50 {
            ids.push(ntf_id().unwrap());
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, ids);
        // Still unguessable: 12 random bytes after the time.
        assert!(
            ids.iter().all(|i| i.len() == "ntf_".len() + 12 + 16),
            "{ids:?}"
        );
    }

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        assert_eq!(backoff(30, 1), 30);
        assert_eq!(backoff(30, 2), 60);
        assert_eq!(backoff(30, 4), 240);
        assert_eq!(backoff(30, 40), 3600);
        assert_eq!(backoff(0, 5), 0);
    }

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let sig = signature(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn webhook_urls_are_https_or_loopback() {
        assert!(url_allowed("https://gw.example.cn/hooks"));
        assert!(url_allowed("http://127.0.0.1:9000/hook"));
        assert!(url_allowed("http://localhost/hook"));
        assert!(!url_allowed("http://gw.example.cn/hooks"));
        assert!(!url_allowed("http://127.0.0.1.evil.cn/x"));
        assert!(!url_allowed("ftp://x"));
        assert!(!url_allowed("https:// x"));
    }
}
