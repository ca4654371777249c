//! The regulators' console pages: audit search with paging and export
//! links, the log's integrity, per-entity statistics with a chart, the
//! anomaly list, overdue objections, and entity details.

use super::{esc, hidden, Lang};
use crate::audit::checkpoint::Checkpoint;
use crate::audit::AuditRecord;
use crate::console::{Anomaly, EntityStats};
use crate::objections::ObjectionView;
use crate::store::audit::VerificationRow;

/// Console navigation and logout.
pub fn nav(lang: Lang, csrf: &str, who: &str) -> String {
    format!(
        "<nav class=\"card\"><a href=\"/console\">{}</a> · <a href=\"/console/stats\">{}</a> · <a href=\"/console/anomalies\">{}</a> · \
         <a href=\"/console/objections\">{}</a><form method=\"post\" action=\"/console/logout\">{}<span>{}</span> \
         <button type=\"submit\">{}</button></form></nav>",
        lang.t("审计日志", "Audit log"),
        lang.t("机构统计", "Entity statistics"),
        lang.t("异常", "Anomalies"),
        lang.t("异议督办", "Objections"),
        hidden("csrf", csrf),
        esc(who),
        lang.t("退出", "Log out"),
    )
}

/// The console login form.
pub fn login(lang: Lang, csrf: &str, message: Option<&str>) -> String {
    format!(
        "<h1>{title}</h1>{alert}<form method=\"post\" action=\"/console/login\">{csrf}{lang_f}\
         <label>{u}<input type=\"text\" name=\"username\" autocomplete=\"username\" required></label>\
         <label>{p}<input type=\"password\" name=\"password\" autocomplete=\"current-password\" required></label>\
         <button class=\"primary\" type=\"submit\">{go}</button></form>",
        title = lang.t("监管控制台登录", "Regulator console login"),
        alert = message
            .map(|m| format!("<div class=\"card err\" role=\"alert\">{}</div>", esc(m)))
            .unwrap_or_default(),
        csrf = hidden("csrf", csrf),
        lang_f = hidden("lang", lang.code()),
        u = lang.t("用户名", "Username"),
        p = lang.t("密码", "Password"),
        go = lang.t("登录", "Log in"),
    )
}

/// The search form's values.
#[derive(Debug, Default, Clone)]
pub struct SearchForm {
    /// (name, value) of every filter, in form order.
    pub fields: Vec<(&'static str, String)>,
}

impl SearchForm {
    /// The query string of these filters (without paging).
    pub fn query(&self) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &self.fields {
            if !v.is_empty() {
                s.append_pair(k, v);
            }
        }
        s.finish()
    }

    fn get(&self, name: &str) -> &str {
        self.fields
            .iter()
            .find(|(k, _)| *k == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// The integrity box: the latest checkpoint and the last verification.
pub fn integrity(lang: Lang, cp: Option<&Checkpoint>, v: Option<&VerificationRow>) -> String {
    let cp = cp.map_or_else(
        || {
            lang.t("尚无签名检查点", "No signed checkpoint yet")
                .to_owned()
        },
        |c| {
            format!(
                "{}: {} {} · {} <code>{}</code> · {}",
                lang.t("最新签名检查点", "Latest signed checkpoint"),
                c.tree_size,
                lang.t("条记录", "records"),
                lang.t("根哈希", "root"),
                esc(&c.root_hash),
                esc(&c.time)
            )
        },
    );
    let v = v.map_or_else(
        || lang.t("尚未校验", "never verified").to_owned(),
        |v| {
            if v.ok {
                format!(
                    "{} ✓ ({} {}, {})",
                    lang.t("上次完整性校验通过", "Last verification passed"),
                    v.records,
                    lang.t("条记录", "records"),
                    esc(&v.time)
                )
            } else {
                format!(
                    "{} ✗ {} ({})",
                    lang.t("上次完整性校验失败", "Last verification FAILED"),
                    esc(v.failure.as_deref().unwrap_or("")),
                    esc(&v.time)
                )
            }
        },
    );
    let class = if v.contains('✗') {
        "card err"
    } else {
        "card"
    };
    format!("<section class=\"{class}\" id=\"integrity\"><p>{cp}</p><p>{v}</p></section>")
}

/// The audit search page.
pub fn search(
    lang: Lang,
    f: &SearchForm,
    records: &[AuditRecord],
    next: Option<i64>,
    integrity_box: &str,
) -> String {
    let labels: [(&str, &str, &str, &str); 9] = [
        ("from", "起始日期", "From", "date"),
        ("to", "截止日期", "To", "date"),
        ("entity", "机构（客户端 ID）", "Entity (client id)", "text"),
        ("sector", "行业", "Sector", "text"),
        ("holder", "持证人证件号码", "Holder ID number", "text"),
        ("license_type", "证照类型", "License type", "text"),
        ("action", "操作", "Action", "text"),
        (
            "outcome",
            "结果（success / refused）",
            "Outcome (success / refused)",
            "text",
        ),
        ("license", "证照编号", "License", "text"),
    ];
    let mut h = format!("<h1>{}</h1>{integrity_box}<form method=\"get\" action=\"/console\" class=\"card\" id=\"search\">", lang.t("审计日志检索", "Audit log search"));
    for (name, zh, en, kind) in labels {
        h.push_str(&format!(
            "<label>{}<input type=\"{kind}\" name=\"{name}\" value=\"{}\"></label>",
            lang.t(zh, en),
            esc(f.get(name))
        ));
    }
    h.push_str(&format!(
        "<button class=\"primary\" type=\"submit\">{}</button></form>",
        lang.t("检索", "Search")
    ));
    let q = f.query();
    let sep = if q.is_empty() { "" } else { "&" };
    h.push_str(&format!(
        "<p>{}: <a id=\"export-jsonl\" href=\"/console/export?format=jsonl{sep}{q}\">JSONL</a> · <a id=\"export-csv\" href=\"/console/export?format=csv{sep}{q}\">CSV</a></p>",
        lang.t("导出当前筛选结果", "Export this view"),
        q = esc(&q),
    ));
    h.push_str(&format!(
        "<table id=\"records\"><tr><th>#</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
        lang.t("时间", "Time"),
        lang.t("主体", "Actor"),
        lang.t("操作", "Action"),
        lang.t("结果", "Outcome"),
        lang.t("证照", "License"),
        lang.t("事由/原因", "Purpose / reason"),
    ));
    for r in records {
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}:{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{} {}</td></tr>",
            r.seq,
            esc(&r.time),
            esc(&r.actor_kind),
            esc(&r.actor_id),
            esc(&r.action),
            esc(&r.outcome),
            esc(r.license.as_deref().unwrap_or("")),
            esc(r.purpose.as_deref().unwrap_or("")),
            esc(r.reason.as_deref().unwrap_or("")),
        ));
    }
    h.push_str("</table>");
    if records.is_empty() {
        h.push_str(&format!(
            "<p>{}</p>",
            lang.t("没有符合条件的记录。", "No records match.")
        ));
    }
    if let Some(n) = next {
        h.push_str(&format!(
            "<p><a id=\"next-page\" href=\"/console?{}{sep}after={n}\">{}</a></p>",
            esc(&q),
            lang.t("下一页", "Next page")
        ));
    }
    h
}

/// A horizontal bar chart of reads and refusals per entity (inline SVG).
fn chart(stats: &[EntityStats], lang: Lang) -> String {
    let max = stats
        .iter()
        .map(|s| s.reads.max(s.refusals))
        .max()
        .unwrap_or(0)
        .max(1);
    let row = 34;
    let height = 20 + row * stats.len().max(1);
    let mut svg = format!(
        "<svg id=\"chart\" role=\"img\" aria-label=\"{}\" viewBox=\"0 0 640 {height}\" width=\"100%\" xmlns=\"http://www.w3.org/2000/svg\">\
         <rect x=\"180\" y=\"2\" width=\"12\" height=\"10\" fill=\"#1456c8\"/><text x=\"196\" y=\"11\" font-size=\"11\">{}</text>\
         <rect x=\"260\" y=\"2\" width=\"12\" height=\"10\" fill=\"#d33\"/><text x=\"276\" y=\"11\" font-size=\"11\">{}</text>",
        lang.t("各机构读取与拒绝次数", "Reads and refusals per entity"),
        lang.t("读取", "reads"),
        lang.t("拒绝", "refusals"),
    );
    for (i, s) in stats.iter().enumerate() {
        let y = 20 + i * row;
        let w = |n: i64| 440 * n / max;
        let name: String = s.name.chars().take(14).collect();
        svg.push_str(&format!(
            "<text x=\"0\" y=\"{}\" font-size=\"12\">{}</text>\
             <rect x=\"180\" y=\"{y}\" width=\"{}\" height=\"12\" fill=\"#1456c8\"><title>{}</title></rect>\
             <rect x=\"180\" y=\"{}\" width=\"{}\" height=\"12\" fill=\"#d33\"><title>{}</title></rect>",
            y + 16,
            esc(&name),
            w(s.reads),
            s.reads,
            y + 14,
            w(s.refusals),
            s.refusals,
        ));
    }
    svg.push_str("</svg>");
    svg
}

/// The period form of statistics and anomalies.
fn period_form(lang: Lang, action: &str, from: &str, to: &str) -> String {
    format!(
        "<form method=\"get\" action=\"{action}\" class=\"card\"><label>{}<input type=\"date\" name=\"from\" value=\"{}\"></label>\
         <label>{}<input type=\"date\" name=\"to\" value=\"{}\"></label><button type=\"submit\">{}</button></form>",
        lang.t("起始日期", "From"),
        esc(from),
        lang.t("截止日期（含）", "To (inclusive)"),
        esc(to),
        lang.t("统计", "Show"),
    )
}

/// Per-entity statistics.
pub fn stats(lang: Lang, from: &str, to: &str, stats: &[EntityStats]) -> String {
    let mut h = format!(
        "<h1>{}</h1>{}",
        lang.t("机构用证统计", "Entity statistics"),
        period_form(lang, "/console/stats", from, to)
    );
    h.push_str(&chart(stats, lang));
    h.push_str(&format!(
        "<table id=\"stats\"><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
        lang.t("机构", "Entity"),
        lang.t("行业", "Sector"),
        lang.t("读取", "Reads"),
        lang.t("核验", "Verifications"),
        lang.t("拒绝", "Refusals"),
        lang.t("授权", "Consents"),
        lang.t("撤回", "Revoked"),
    ));
    for s in stats {
        let reasons: Vec<String> = s
            .refusal_reasons
            .iter()
            .take(5)
            .map(|(r, n)| format!("{} × {n}", esc(r)))
            .collect();
        h.push_str(&format!(
            "<tr><td><a href=\"/console/entities/{id}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}<br><small>{}</small></td><td>{}</td><td>{}</td></tr>",
            esc(&s.name),
            esc(&s.sector),
            s.reads,
            s.verifications,
            s.refusals,
            reasons.join("<br>"),
            s.consents,
            s.revocations,
            id = esc(&s.entity),
        ));
    }
    h.push_str("</table>");
    h
}

/// The anomaly list.
pub fn anomalies(lang: Lang, from: &str, to: &str, list: &[Anomaly]) -> String {
    let mut h = format!(
        "<h1>{}</h1>{}",
        lang.t("异常用证", "Anomalies"),
        period_form(lang, "/console/anomalies", from, to)
    );
    if list.is_empty() {
        h.push_str(&format!(
            "<p>{}</p>",
            lang.t("未发现异常。", "Nothing unusual.")
        ));
    }
    h.push_str("<ul id=\"anomalies\">");
    for a in list {
        let kind = match a.kind.as_str() {
            "high_refusal_rate" => lang.t("拒绝率异常", "High refusal rate"),
            "outside_use_list" => lang.t("超出用证清单的请求", "Requests outside the use list"),
            _ => lang.t("授权额度过快用尽", "Budget exhausted quickly"),
        };
        h.push_str(&format!(
            "<li class=\"card warn\"><strong>{kind}</strong> — <a href=\"/console/entities/{}\">{}</a>: {}</li>",
            esc(&a.entity),
            esc(&a.name),
            esc(&a.detail)
        ));
    }
    h.push_str("</ul>");
    h
}

/// Open and overdue objections.
pub fn objections(lang: Lang, list: &[ObjectionView]) -> String {
    let mut h = format!(
        "<h1>{}</h1><table id=\"objections\"><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
        lang.t("异议督办", "Objections"),
        lang.t("证照", "License"),
        lang.t("发证单位", "Issuer"),
        lang.t("提出", "Filed"),
        lang.t("答复期限", "Due"),
        lang.t("状态", "Status"),
    );
    for o in list {
        let status = if o.overdue {
            lang.t("已超期", "OVERDUE")
        } else {
            o.status.as_str()
        };
        h.push_str(&format!(
            "<tr class=\"{}\"><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if o.overdue { "err" } else { "" },
            esc(&o.license),
            esc(&o.issuer),
            esc(&o.filed_at),
            esc(&o.due_on),
            esc(status),
        ));
    }
    h.push_str("</table>");
    h
}

/// One entity: registration, scenarios and approval history.
pub fn entity(
    lang: Lang,
    e: &crate::store::entities::EntityRow,
    scenarios: &[crate::store::entities::ScenarioRow],
    history: &[AuditRecord],
) -> String {
    let mut h = format!(
        "<h1>{}</h1><dl class=\"card\"><dt>{}</dt><dd><code>{}</code></dd><dt>USCC</dt><dd><code>{}</code></dd><dt>{}</dt><dd>{}</dd>\
         <dt>{}</dt><dd>{}</dd><dt>{}</dt><dd>{}</dd></dl><h2>{}</h2><ul>",
        esc(&e.name),
        lang.t("客户端 ID", "Client id"),
        esc(&e.id),
        esc(&e.uscc),
        lang.t("行业", "Sector"),
        esc(&e.sector),
        lang.t("状态", "Status"),
        esc(&e.status),
        lang.t("备案号", "Filing number"),
        esc(e.filing_no.as_deref().unwrap_or("-")),
        lang.t("用证场景", "Scenarios"),
    );
    for s in scenarios {
        h.push_str(&format!(
            "<li><code>{}</code> — {} <small>{}</small></li>",
            esc(&s.purpose),
            esc(&s.status),
            esc(&s.spec)
        ));
    }
    h.push_str(&format!(
        "</ul><h2>{}</h2><table id=\"history\">",
        lang.t("审批记录", "Approval history")
    ));
    for r in history {
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}:{}</td><td>{}</td></tr>",
            esc(&r.time),
            esc(&r.action),
            esc(&r.actor_kind),
            esc(&r.actor_id),
            esc(r.reason.as_deref().unwrap_or("")),
        ));
    }
    h.push_str("</table>");
    h
}
