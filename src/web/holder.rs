//! The holder's own pages: licenses, access history, objections,
//! notification choices, the QR code of a shown license, and the navigation
//! (with the logout form) every holder page ends with.

use super::{esc, hidden, Lang};
use crate::licenses::LicenseStatus;
use crate::objections::ObjectionView;

/// Links between the holder pages, and the logout button.
pub fn nav(lang: Lang, csrf: &str) -> String {
    let links = [
        ("/holder", lang.t("我的证照", "My licenses")),
        ("/holder/consents", lang.t("我的授权", "My consents")),
        ("/holder/requests", lang.t("待处理请求", "Pending requests")),
        ("/holder/history", lang.t("用证记录", "Access history")),
        ("/holder/show", lang.t("亮证", "Show a license")),
        ("/holder/objections", lang.t("我的异议", "My objections")),
        ("/holder/notifications", lang.t("通知设置", "Notifications")),
    ];
    let mut h = String::from("<nav class=\"card\">");
    for (i, (href, text)) in links.iter().enumerate() {
        if i > 0 {
            h.push_str(" · ");
        }
        h.push_str(&format!("<a href=\"{href}\">{text}</a>"));
    }
    h.push_str(&format!(
        "<form method=\"post\" action=\"/logout\">{}<button type=\"submit\">{}</button></form></nav>",
        hidden("csrf", csrf),
        lang.t("退出登录", "Log out")
    ));
    h
}

fn notice(n: Option<&str>) -> String {
    n.map(|n| format!("<div class=\"card\" role=\"status\">{}</div>", esc(n)))
        .unwrap_or_default()
}

/// A status in words.
pub fn status_text(lang: Lang, s: LicenseStatus) -> &'static str {
    match s {
        LicenseStatus::Valid => lang.t("有效", "valid"),
        LicenseStatus::Suspended => lang.t("已暂停", "suspended"),
        LicenseStatus::Cancelled => lang.t("已注销", "cancelled"),
        LicenseStatus::Expired => lang.t("已过期", "expired"),
    }
}

/// One of the holder's licenses, ready to show.
pub struct LicenseItem {
    /// Identifier of the current version.
    pub identifier: String,
    /// Type name (in the page's language).
    pub type_name: String,
    /// Issuing unit's name.
    pub issuer: String,
    /// Status now.
    pub status: LicenseStatus,
    /// Validity.
    pub valid_from: String,
    /// End of validity.
    pub valid_until: Option<String>,
    /// Days until the end of validity (when it ends).
    pub days_left: Option<i64>,
}

/// My licenses, with expiry warnings.
pub fn licenses_page(lang: Lang, items: &[LicenseItem], csrf: &str) -> String {
    let mut h = format!("<h1>{}</h1>", lang.t("我的证照", "My licenses"));
    if items.is_empty() {
        h.push_str(&format!(
            "<p>{}</p>",
            lang.t("您名下暂无电子证照。", "You hold no electronic license.")
        ));
    }
    for l in items {
        let warn = match l.days_left {
            Some(d) if l.status == LicenseStatus::Valid && (0..=30).contains(&d) => format!(
                "<p class=\"card warn\" role=\"note\">{}</p>",
                esc(&match lang {
                    Lang::Zh => format!("将于 {d} 天后到期，请及时办理换证。"),
                    Lang::En => format!("Expires in {d} days: renew it in time."),
                })
            ),
            _ => String::new(),
        };
        let card = if l.status == LicenseStatus::Valid {
            "card"
        } else {
            "card err"
        };
        h.push_str(&format!(
            "<section class=\"{card}\"><h2>{name}</h2><dl><dt>{id_l}</dt><dd><code>{id}</code></dd>\
             <dt>{iss_l}</dt><dd>{iss}</dd><dt>{st_l}</dt><dd class=\"status\">{st}</dd>\
             <dt>{val_l}</dt><dd>{from} – {until}</dd></dl>{warn}\
             <p><a href=\"/holder/objections/new?license={q}\">{object}</a> · <a href=\"/holder/history?license={q}\">{reads}</a></p></section>",
            name = esc(&l.type_name),
            id_l = lang.t("证照编号", "Identifier"),
            id = esc(&l.identifier),
            iss_l = lang.t("发证单位", "Issued by"),
            iss = esc(&l.issuer),
            st_l = lang.t("状态", "Status"),
            st = status_text(lang, l.status),
            val_l = lang.t("有效期", "Valid"),
            from = esc(&l.valid_from),
            until = esc(l.valid_until.as_deref().unwrap_or(lang.t("长期", "indefinite"))),
            q = esc(&form_urlencoded::byte_serialize(l.identifier.as_bytes()).collect::<String>()),
            object = lang.t("对信息有异议", "Object to its data"),
            reads = lang.t("谁读取过", "Who read it"),
        ));
    }
    h.push_str(&nav(lang, csrf));
    h
}

/// One read of a license, as the holder sees it.
pub struct HistoryItem {
    /// When.
    pub time: String,
    /// Read or verified.
    pub action: String,
    /// Entity name (or id).
    pub entity: String,
    /// License identifier.
    pub license: String,
    /// Purpose.
    pub purpose: String,
    /// Consent.
    pub consent: String,
    /// Fields read, or the verification verdict.
    pub detail: String,
}

/// The filters of the history page.
#[derive(Debug, Default, Clone)]
pub struct HistoryFilter {
    /// Entity name or id contains.
    pub entity: String,
    /// License identifier.
    pub license: String,
    /// From this date (YYYY-MM-DD).
    pub from: String,
    /// Until this date, inclusive.
    pub to: String,
}

/// My access history with its filter form.
pub fn history_page(lang: Lang, items: &[HistoryItem], f: &HistoryFilter, csrf: &str) -> String {
    let input = |name: &str, label: &str, value: &str, kind: &str| {
        format!(
            "<label>{label}<input type=\"{kind}\" name=\"{name}\" value=\"{}\"></label>",
            esc(value)
        )
    };
    let mut h = format!(
        "<h1>{title}</h1><form method=\"get\" action=\"/holder/history\" class=\"card\" id=\"filter\">{e}{l}{from}{to}\
         <button type=\"submit\">{go}</button></form>",
        title = lang.t("用证记录", "Access history"),
        e = input("entity", lang.t("机构", "Entity"), &f.entity, "text"),
        l = input("license", lang.t("证照编号", "License"), &f.license, "text"),
        from = input("from", lang.t("起始日期", "From"), &f.from, "date"),
        to = input("to", lang.t("截止日期", "To"), &f.to, "date"),
        go = lang.t("筛选", "Filter"),
    );
    if items.is_empty() {
        h.push_str(&format!(
            "<p>{}</p>",
            lang.t("没有符合条件的记录。", "No reads match.")
        ));
    } else {
        h.push_str(&format!(
            "<table id=\"history\"><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
            lang.t("时间", "When"),
            lang.t("机构", "Entity"),
            lang.t("证照与信息项", "License and fields"),
            lang.t("事由", "Purpose"),
            lang.t("授权", "Consent"),
        ));
        for i in items {
            let what = if i.action == "license.verified" {
                lang.t("核验", "verified")
            } else {
                lang.t("读取", "read")
            };
            h.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{what}: <code>{}</code><br>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                esc(&i.time),
                esc(&i.entity),
                esc(&i.license),
                esc(&i.detail),
                esc(&i.purpose),
                esc(&i.consent),
            ));
        }
        h.push_str("</table>");
    }
    h.push_str(&nav(lang, csrf));
    h
}

fn objection_status(lang: Lang, o: &ObjectionView) -> String {
    let s = match o.status.as_str() {
        "open" if o.overdue => lang.t("处理中（已超期）", "open (overdue)"),
        "open" => lang.t("处理中", "open"),
        "corrected" => lang.t("已更正", "corrected"),
        _ => lang.t("不予更正", "rejected"),
    };
    s.to_owned()
}

/// My objections.
pub fn objections_page(
    lang: Lang,
    list: &[ObjectionView],
    csrf: &str,
    note: Option<&str>,
) -> String {
    let mut h = format!(
        "<h1>{}</h1>{}",
        lang.t("我的异议", "My objections"),
        notice(note)
    );
    h.push_str(&format!(
        "<p>{}</p>",
        lang.t(
            "发证单位应在 5 个工作日内答复。要提出新的异议，请在“我的证照”中选择证照。",
            "The issuing unit answers within 5 working days. To object, pick a license under My licenses."
        )
    ));
    for o in list {
        h.push_str(&format!(
            "<section class=\"card objection\"><dl><dt>{lic_l}</dt><dd><code>{lic}</code></dd><dt>{f_l}</dt><dd>{fields}</dd>\
             <dt>{r_l}</dt><dd>{reason}</dd><dt>{s_l}</dt><dd class=\"status\">{status}</dd><dt>{d_l}</dt><dd>{due}</dd>{answer}</dl></section>",
            lic_l = lang.t("证照", "License"),
            lic = esc(&o.license),
            f_l = lang.t("异议信息项", "Fields"),
            fields = esc(&o.fields.join(", ")),
            r_l = lang.t("异议理由", "Reason"),
            reason = esc(&o.reason),
            s_l = lang.t("状态", "Status"),
            status = esc(&objection_status(lang, o)),
            d_l = lang.t("答复期限", "Answer due"),
            due = esc(&o.due_on),
            answer = o
                .resolution
                .as_ref()
                .map(|r| format!(
                    "<dt>{}</dt><dd>{}{}</dd>",
                    lang.t("答复", "Answer"),
                    esc(r),
                    o.new_license
                        .as_ref()
                        .map(|n| format!(" → <code>{}</code>", esc(n)))
                        .unwrap_or_default()
                ))
                .unwrap_or_default(),
        ));
    }
    h.push_str(&nav(lang, csrf));
    h
}

/// The form to object to one license's data.
pub fn objection_form(
    lang: Lang,
    identifier: &str,
    fields: &[(String, String)],
    csrf: &str,
) -> String {
    let mut boxes = String::new();
    for (key, label) in fields {
        boxes.push_str(&format!(
            "<label><input type=\"checkbox\" name=\"field\" value=\"{}\"> {}</label>",
            esc(key),
            esc(label)
        ));
    }
    format!(
        "<h1>{title}</h1><form method=\"post\" action=\"/holder/objections\" class=\"card\">{csrf}{lic}{lang_f}\
         <p><code>{id}</code></p><fieldset><legend>{which}</legend>{boxes}</fieldset>\
         <label>{why}<textarea name=\"reason\" rows=\"4\" required maxlength=\"2000\"></textarea></label>\
         <label>{ev}<textarea name=\"evidence\" rows=\"3\" maxlength=\"4000\"></textarea></label>\
         <button class=\"primary\" type=\"submit\">{submit}</button></form>{nav}",
        title = lang.t("提出异议", "Object to a license's data"),
        csrf = hidden("csrf", csrf),
        lic = hidden("license", identifier),
        lang_f = hidden("lang", lang.code()),
        id = esc(identifier),
        which = lang.t("哪些信息有误", "Which fields are wrong"),
        why = lang.t("异议理由", "What is wrong"),
        ev = lang.t("证明材料（文号、编号等）", "Evidence (document numbers, references)"),
        submit = lang.t("提交异议", "Submit"),
        nav = nav(lang, csrf),
    )
}

/// The notification choices.
pub fn preferences_page(
    lang: Lang,
    prefs: &[crate::notify::Preference],
    csrf: &str,
    note: Option<&str>,
) -> String {
    let mut boxes = String::new();
    for p in prefs {
        let label = crate::notify::HOLDER_KINDS
            .iter()
            .find(|(k, _, _)| *k == p.kind)
            .map_or(p.kind.as_str(), |(_, zh, en)| lang.t(zh, en));
        boxes.push_str(&format!(
            "{}<label><input type=\"checkbox\" name=\"on\" value=\"{k}\"{checked}> {}</label>",
            hidden("kind", &p.kind),
            esc(label),
            k = esc(&p.kind),
            checked = if p.enabled { " checked" } else { "" },
        ));
    }
    format!(
        "<h1>{title}</h1>{note}<form method=\"post\" action=\"/holder/notifications\" class=\"card\">{csrf}{lang_f}{boxes}\
         <button class=\"primary\" type=\"submit\">{save}</button></form>{nav}",
        title = lang.t("通知设置", "Notifications"),
        note = notice(note),
        csrf = hidden("csrf", csrf),
        lang_f = hidden("lang", lang.code()),
        save = lang.t("保存", "Save"),
        nav = nav(lang, csrf),
    )
}

/// A QR code of `payload` as an SVG data URI (the page's CSP allows `data:` images).
pub fn qr_data_uri(payload: &str) -> Option<String> {
    use base64::Engine;
    let code = qrcode::QrCode::new(payload.as_bytes()).ok()?;
    let svg = code
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(220, 220)
        .quiet_zone(true)
        .build();
    Some(format!(
        "data:image/svg+xml;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(svg)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qr_codes_are_svg_images() {
        let uri = qr_data_uri("licensegate-show:ABC@https://broker.example").unwrap();
        assert!(uri.starts_with("data:image/svg+xml;base64,"));
    }

    #[test]
    fn nav_carries_the_logout_form() {
        let h = nav(Lang::En, "tok\"en");
        assert!(h.contains("action=\"/logout\""));
        assert!(h.contains("value=\"tok&quot;en\""));
    }
}
