//! SQL for notifications: the outbox, holders' preferences, webhook
//! endpoints and deliveries, and what the daily reminder job looks for.

use sqlx::any::AnyRow;
use sqlx::AnyConnection;

use super::consent::{consent_from_row, ConsentRow};
use super::licenses::{license_from_row, LicenseRow};
use super::{col, Bind, Statement, Store, Write};
use crate::error::{Error, Result};

/// The status a notification `n` is queued with, decided in the statement
/// that queues it (the group commit of the record it tells about):
/// `suppressed` when its holder turned its kind off, `queued` when an active
/// endpoint subscribes to it (the delivery worker makes the deliveries, see
/// `crate::notify::dispatch_queued`, which decides the same two things
/// again when it gets to it), else `dispatched`: nothing is left to do.
///
/// Every retrieval queues one. Queued, each was written twice more (moved
/// on, out of the queue's index) by the worker's rounds beside the log's
/// appends; routed here, those with nowhere to go are written once.
/// A row given a status other than `queued` keeps it. `$subscribed_kind`:
/// the condition, in the dialect at hand, that endpoint `e` subscribes to
/// the kind of notification `n`.
macro_rules! route {
    ($subscribed_kind:literal) => {
        concat!(
            "CASE WHEN n.status <> 'queued' THEN n.status
                  WHEN n.recipient_kind = 'holder' AND EXISTS (
                       SELECT 1 FROM notification_preferences p
                        WHERE p.holder_id = n.recipient_id AND p.kind = n.kind AND p.enabled = 0)
                       THEN 'suppressed'
                  WHEN EXISTS (
                       SELECT 1 FROM webhook_endpoints e
                        WHERE e.active <> 0 AND e.recipients IN ('all', n.recipient_kind)
                          AND ",
            $subscribed_kind,
            ") THEN 'queued'
                  ELSE 'dispatched' END"
        )
    };
}

/// What [`Store::dispatch_all`] does with one queued notification.
#[derive(Debug, Clone)]
pub struct Dispatch {
    /// The notification.
    pub notification_id: String,
    /// `dispatched` or `suppressed`.
    pub status: &'static str,
    /// (endpoint id, delivery id) of each delivery to make when dispatched.
    pub deliveries: Vec<(String, String)>,
}

/// A notification as stored.
#[derive(Debug, Clone)]
pub struct NotificationRow {
    /// Id (also the `webhook-id` of its deliveries).
    pub id: String,
    /// holder or entity.
    pub recipient_kind: String,
    /// Holder id or client id.
    pub recipient_id: String,
    /// Kind (license.read, consent.granted, license.expiring…).
    pub kind: String,
    /// JSON payload.
    pub payload: String,
    /// queued, dispatched or suppressed.
    pub status: String,
    /// Queued at.
    pub created_at: String,
}

fn notification(r: &AnyRow) -> Result<NotificationRow> {
    Ok(NotificationRow {
        id: col(r, "id")?,
        recipient_kind: col(r, "recipient_kind")?,
        recipient_id: col(r, "recipient_id")?,
        kind: col(r, "kind")?,
        payload: col(r, "payload")?,
        status: col(r, "status")?,
        created_at: col(r, "created_at")?,
    })
}

/// A webhook endpoint.
#[derive(Debug, Clone)]
pub struct EndpointRow {
    /// Id.
    pub id: String,
    /// Where deliveries are POSTed.
    pub url: String,
    /// holder, entity or all.
    pub recipients: String,
    /// JSON array of kinds; empty for all.
    pub kinds: String,
    /// The signing secret, sealed.
    pub secret: Vec<u8>,
    /// Whether it receives deliveries.
    pub active: bool,
    /// Registered at.
    pub created_at: String,
}

fn endpoint(r: &AnyRow) -> Result<EndpointRow> {
    Ok(EndpointRow {
        id: col(r, "id")?,
        url: col(r, "url")?,
        recipients: col(r, "recipients")?,
        kinds: col(r, "kinds")?,
        secret: col(r, "secret")?,
        active: col::<i64>(r, "active")? != 0,
        created_at: col(r, "created_at")?,
    })
}

/// A delivery with what sending it needs.
#[derive(Debug, Clone)]
pub struct DeliveryRow {
    /// Id.
    pub id: String,
    /// pending, delivered or dead.
    pub status: String,
    /// Attempts made.
    pub attempts: i64,
    /// Next attempt (unix seconds).
    pub next_attempt_at: i64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was delivered.
    pub delivered_at: Option<String>,
    /// The notification.
    pub notification: NotificationRow,
    /// The endpoint's id.
    pub endpoint_id: String,
    /// The endpoint's URL.
    pub url: String,
    /// The endpoint's sealed secret.
    pub secret: Vec<u8>,
}

const DELIVERY_SELECT: &str = "SELECT d.id AS d_id, d.status AS d_status, d.attempts, d.next_attempt_at, d.last_error, d.delivered_at,
        n.id, n.recipient_kind, n.recipient_id, n.kind, n.payload, n.status, n.created_at,
        e.id AS e_id, e.url, e.secret
     FROM deliveries d JOIN notifications n ON n.id = d.notification_id JOIN webhook_endpoints e ON e.id = d.endpoint_id";

fn delivery(r: &AnyRow) -> Result<DeliveryRow> {
    Ok(DeliveryRow {
        id: col(r, "d_id")?,
        status: col(r, "d_status")?,
        attempts: col(r, "attempts")?,
        next_attempt_at: col(r, "next_attempt_at")?,
        last_error: col(r, "last_error")?,
        delivered_at: col(r, "delivered_at")?,
        notification: notification(r)?,
        endpoint_id: col(r, "e_id")?,
        url: col(r, "url")?,
        secret: col(r, "secret")?,
    })
}

impl Store {
    /// Queues notifications in the caller's transaction (the group commit of
    /// the records they tell about), all in one statement, routed as far as
    /// that can be done there (see `route!`).
    pub async fn insert_notifications_in(
        conn: &mut AnyConnection,
        rows: &[&NotificationRow],
    ) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let write = Self::notifications_write(super::is_sqlite(conn), rows)?;
        Self::run_writes(conn, vec![write]).await
    }

    /// The statement of [`Store::insert_notifications_in`]. On SQLite the
    /// rows (`sqlite_batch_rows!`) and then their columns are materialized:
    /// the routing uses four of the columns twice.
    pub fn notifications_write(sqlite: bool, rows: &[&NotificationRow]) -> Result<Write> {
        let sql = if sqlite {
            concat!(
                "WITH ",
                sqlite_batch_rows!(),
                ",
                      n AS MATERIALIZED (SELECT key, v ->> 0 AS id, v ->> 1 AS recipient_kind, v ->> 2 AS recipient_id,
                                                v ->> 3 AS kind, v ->> 4 AS payload, v ->> 5 AS status, v ->> 6 AS created_at
                                           FROM r)
                 INSERT INTO notifications (id, recipient_kind, recipient_id, kind, payload, status, dedupe_key, created_at)
                 SELECT id, recipient_kind, recipient_id, kind, payload, ",
                // An endpoint's `kinds` (a JSON array, empty for all) has the
                // notification's; one not an array of kinds subscribes to all,
                // as the worker reads it.
                route!(
                    "CASE WHEN NOT json_valid(e.kinds) OR json_array_length(e.kinds) = 0 THEN 1
                          ELSE EXISTS (SELECT 1 FROM json_each(e.kinds) k WHERE k.value = n.kind) END"
                ),
                ", NULL, created_at FROM n ORDER BY key",
            )
        } else {
            concat!(
                "WITH n AS (SELECT t.ord AS key, r ->> 0 AS id, r ->> 1 AS recipient_kind, r ->> 2 AS recipient_id,
                                   r ->> 3 AS kind, r ->> 4 AS payload, r ->> 5 AS status, r ->> 6 AS created_at
                              FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS t(r, ord))
                 INSERT INTO notifications (id, recipient_kind, recipient_id, kind, payload, status, dedupe_key, created_at)
                 SELECT id, recipient_kind, recipient_id, kind, payload, ",
                route!("(jsonb_array_length(e.kinds::jsonb) = 0 OR e.kinds::jsonb ? n.kind)"),
                ", NULL, created_at FROM n ORDER BY key",
            )
        };
        let values: Vec<[&str; 7]> = rows
            .iter()
            .map(|n| {
                [
                    n.id.as_str(),
                    &n.recipient_kind,
                    &n.recipient_id,
                    &n.kind,
                    &n.payload,
                    &n.status,
                    &n.created_at,
                ]
            })
            .collect();
        Ok(Write {
            statement: Statement {
                sql,
                binds: vec![Bind::Text(
                    serde_json::to_string(&values).map_err(Error::internal)?,
                )],
            },
            changes: Some(rows.len() as u64),
            what: "the notifications were not queued whole",
        })
    }

    /// Queues a scheduled notification unless one with `dedupe_key` exists;
    /// true when it was queued now.
    pub async fn queue_once(&self, n: &NotificationRow, dedupe_key: &str) -> Result<bool> {
        Ok(sqlx::query(
            "INSERT INTO notifications (id, recipient_kind, recipient_id, kind, payload, status, dedupe_key, created_at)
             VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7) ON CONFLICT (dedupe_key) DO NOTHING",
        )
        .bind(&n.id)
        .bind(&n.recipient_kind)
        .bind(&n.recipient_id)
        .bind(&n.kind)
        .bind(&n.payload)
        .bind(dedupe_key)
        .bind(&n.created_at)
        .execute(self.writer())
        .await?
        .rows_affected()
            == 1)
    }

    /// A recipient's notifications, newest first (at most 200).
    pub async fn notifications_of(
        &self,
        recipient_kind: &str,
        recipient_id: &str,
    ) -> Result<Vec<NotificationRow>> {
        sqlx::query(
            "SELECT * FROM notifications WHERE recipient_kind = $1 AND recipient_id = $2
             ORDER BY created_at DESC, id LIMIT 200",
        )
        .bind(recipient_kind)
        .bind(recipient_id)
        .fetch_all(self.reader())
        .await?
        .iter()
        .map(notification)
        .collect()
    }

    /// Queued notifications, oldest first.
    pub async fn queued_notifications(&self, limit: i64) -> Result<Vec<NotificationRow>> {
        sqlx::query(
            "SELECT * FROM notifications WHERE status = 'queued' ORDER BY created_at, id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.reader())
        .await?
        .iter()
        .map(notification)
        .collect()
    }

    /// Moves queued notifications on in one transaction, each as `moves`
    /// says (`dispatched` with one delivery per endpoint, or `suppressed`),
    /// each once: one still queued is moved, one another worker moved (or is
    /// moving, on PostgreSQL) is left alone. Returns how many it moved. Two
    /// statements per status whatever the number, so the log's one SQLite
    /// writer waits for one short transaction per round, not one per
    /// notification (with a commit each).
    pub async fn dispatch_all(
        &self,
        moves: &[Dispatch],
        now_unix: i64,
        now: &str,
    ) -> Result<usize> {
        let sqlite = self.backend == super::Backend::Sqlite;
        let mut tx = self.writer().begin().await?;
        let mut moved_count = 0;
        for status in ["dispatched", "suppressed"] {
            let ids: Vec<&str> = moves
                .iter()
                .filter(|m| m.status == status)
                .map(|m| m.notification_id.as_str())
                .collect();
            if ids.is_empty() {
                continue;
            }
            let sql = if sqlite {
                // `+status`: find the rows by id. On the status index SQLite
                // visited every queued notification per chunk (some 30,000
                // after 5 s at 6,000 retrievals/s), holding the log's writer
                // for over 100 ms each round.
                "UPDATE notifications SET status = $2
                  WHERE +status = 'queued' AND id IN (SELECT value FROM json_each($1))
                  RETURNING id"
            } else {
                // Rows another node is moving are skipped, not waited for
                // (and locked in one order: no deadlock between nodes).
                "UPDATE notifications SET status = $2
                  WHERE id IN (SELECT id FROM notifications
                                WHERE status = 'queued'
                                  AND id IN (SELECT jsonb_array_elements_text($1::jsonb))
                                ORDER BY id FOR UPDATE SKIP LOCKED)
                  RETURNING id"
            };
            let moved: std::collections::HashSet<String> = sqlx::query(sql)
                .bind(serde_json::to_string(&ids).map_err(Error::internal)?)
                .bind(status)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| col(r, "id"))
                .collect::<Result<_>>()?;
            moved_count += moved.len();
            let deliveries: Vec<[&str; 3]> = moves
                .iter()
                .filter(|m| m.status == status && moved.contains(&m.notification_id))
                .flat_map(|m| {
                    m.deliveries.iter().map(|(endpoint, id)| {
                        [id.as_str(), m.notification_id.as_str(), endpoint.as_str()]
                    })
                })
                .collect();
            if deliveries.is_empty() {
                continue;
            }
            let sql = if sqlite {
                "INSERT INTO deliveries (id, notification_id, endpoint_id, status, attempts, next_attempt_at, lease_until, last_error, delivered_at, created_at)
                 SELECT value ->> 0, value ->> 1, value ->> 2, 'pending', 0, $2, 0, NULL, NULL, $3 FROM json_each($1)"
            } else {
                "INSERT INTO deliveries (id, notification_id, endpoint_id, status, attempts, next_attempt_at, lease_until, last_error, delivered_at, created_at)
                 SELECT r ->> 0, r ->> 1, r ->> 2, 'pending', 0, $2, 0, NULL, NULL, $3 FROM jsonb_array_elements($1::jsonb) AS t(r)"
            };
            let inserted = sqlx::query(sql)
                .bind(serde_json::to_string(&deliveries).map_err(Error::internal)?)
                .bind(now_unix)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if inserted != deliveries.len() as u64 {
                return Err(Error::internal("a delivery was not queued"));
            }
        }
        tx.commit().await?;
        Ok(moved_count)
    }

    /// Kinds a holder turned off.
    pub async fn disabled_kinds(&self, holder_id: &str) -> Result<Vec<String>> {
        sqlx::query(
            "SELECT kind FROM notification_preferences WHERE holder_id = $1 AND enabled = 0 ORDER BY kind",
        )
        .bind(holder_id)
        .fetch_all(self.reader())
        .await?
        .iter()
        .map(|r| col(r, "kind"))
        .collect()
    }

    /// Turns a kind on or off for a holder.
    pub async fn set_preference(&self, holder_id: &str, kind: &str, enabled: bool) -> Result<()> {
        sqlx::query(
            "INSERT INTO notification_preferences (holder_id, kind, enabled) VALUES ($1, $2, $3)
             ON CONFLICT (holder_id, kind) DO UPDATE SET enabled = excluded.enabled",
        )
        .bind(holder_id)
        .bind(kind)
        .bind(i64::from(enabled))
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// Registers a webhook endpoint.
    pub async fn insert_endpoint(&self, e: &EndpointRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO webhook_endpoints (id, url, recipients, kinds, secret, active, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&e.id)
        .bind(&e.url)
        .bind(&e.recipients)
        .bind(&e.kinds)
        .bind(e.secret.clone())
        .bind(i64::from(e.active))
        .bind(&e.created_at)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// Every webhook endpoint, oldest first.
    pub async fn endpoints(&self) -> Result<Vec<EndpointRow>> {
        sqlx::query("SELECT * FROM webhook_endpoints ORDER BY created_at, id")
            .fetch_all(self.reader())
            .await?
            .iter()
            .map(endpoint)
            .collect()
    }

    /// Turns an endpoint on or off; false when there is none with this id.
    pub async fn set_endpoint_active(&self, id: &str, active: bool) -> Result<bool> {
        Ok(
            sqlx::query("UPDATE webhook_endpoints SET active = $2 WHERE id = $1")
                .bind(id)
                .bind(i64::from(active))
                .execute(self.writer())
                .await?
                .rows_affected()
                == 1,
        )
    }

    /// Takes up to `limit` due deliveries for `lease` seconds (another
    /// worker skips them meanwhile).
    pub async fn claim_deliveries(
        &self,
        now_unix: i64,
        lease: i64,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>> {
        let due = sqlx::query(&format!(
            "{DELIVERY_SELECT} WHERE d.status = 'pending' AND d.next_attempt_at <= $1 AND d.lease_until <= $1
             ORDER BY d.next_attempt_at, d.id LIMIT $2"
        ))
        .bind(now_unix)
        .bind(limit)
        .fetch_all(self.reader())
        .await?;
        let mut claimed = Vec::with_capacity(due.len());
        for r in &due {
            let d = delivery(r)?;
            let taken = sqlx::query(
                "UPDATE deliveries SET lease_until = $2 WHERE id = $1 AND status = 'pending' AND lease_until <= $3",
            )
            .bind(&d.id)
            .bind(now_unix + lease)
            .bind(now_unix)
            .execute(self.writer())
            .await?
            .rows_affected();
            if taken == 1 {
                claimed.push(d);
            }
        }
        Ok(claimed)
    }

    /// Records a successful attempt.
    pub async fn delivered(&self, id: &str, now: &str) -> Result<()> {
        sqlx::query(
            "UPDATE deliveries SET status = 'delivered', attempts = attempts + 1, delivered_at = $2, last_error = NULL, lease_until = 0
             WHERE id = $1 AND status = 'pending'",
        )
        .bind(id)
        .bind(now)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// Records a failed attempt: retried at `next_attempt_at`, or dead.
    pub async fn delivery_failed(
        &self,
        id: &str,
        error: &str,
        next_attempt_at: i64,
        dead: bool,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE deliveries SET status = $2, attempts = attempts + 1, next_attempt_at = $3, last_error = $4, lease_until = 0
             WHERE id = $1 AND status = 'pending'",
        )
        .bind(id)
        .bind(if dead { "dead" } else { "pending" })
        .bind(next_attempt_at)
        .bind(error)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// Deliveries in a status, newest first (at most 500).
    pub async fn deliveries(&self, status: Option<&str>) -> Result<Vec<DeliveryRow>> {
        sqlx::query(&format!(
            "{DELIVERY_SELECT} WHERE ($1 IS NULL OR d.status = $1) ORDER BY d.created_at DESC, d.id LIMIT 500"
        ))
        .bind(status)
        .fetch_all(self.reader())
        .await?
        .iter()
        .map(delivery)
        .collect()
    }

    /// Puts a dead delivery back in the queue (operator); false when it is not dead.
    pub async fn retry_delivery(&self, id: &str, now_unix: i64) -> Result<bool> {
        Ok(sqlx::query(
            "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $2, lease_until = 0
             WHERE id = $1 AND status = 'dead'",
        )
        .bind(id)
        .bind(now_unix)
        .execute(self.writer())
        .await?
        .rows_affected()
            == 1)
    }

    /// Valid licenses whose validity ends between `from` and `to` (dates, inclusive).
    pub async fn licenses_ending(&self, from: &str, to: &str) -> Result<Vec<LicenseRow>> {
        sqlx::query(
            "SELECT * FROM licenses WHERE status = 'valid' AND valid_until IS NOT NULL
               AND valid_until >= $1 AND valid_until <= $2 ORDER BY valid_until, id",
        )
        .bind(from)
        .bind(to)
        .fetch_all(self.reader())
        .await?
        .iter()
        .map(license_from_row)
        .collect()
    }

    /// Active consents that expired after `since` and by `now` (unix seconds),
    /// or that are still running and were created before `created_before`.
    pub async fn consents_to_remind(
        &self,
        since: i64,
        now_unix: i64,
        created_before: &str,
    ) -> Result<Vec<ConsentRow>> {
        sqlx::query(
            "SELECT * FROM consents WHERE status = 'active'
               AND ((expires_at > $1 AND expires_at <= $2) OR (expires_at > $2 AND created_at < $3))
             ORDER BY created_at, id",
        )
        .bind(since)
        .bind(now_unix)
        .bind(created_before)
        .fetch_all(self.reader())
        .await?
        .iter()
        .map(consent_from_row)
        .collect()
    }
}
