//! The holder pages' HTML.

use super::{esc, hidden, Lang};
use crate::consent::{ConsentView, SINGLE_USE_SECONDS};
use crate::licenses::catalog::LicenseType;
use crate::oauth::flows::ConsentPrompt;

/// A sector in words.
pub fn sector(lang: Lang, s: &str) -> String {
    let (zh, en) = match s {
        "bank" => ("银行", "bank"),
        "insurer" => ("保险机构", "insurer"),
        "logistics" => ("物流企业", "logistics firm"),
        "hospital" => ("医疗机构", "hospital"),
        "telecom" => ("电信运营商", "telecom operator"),
        _ => ("其他", "other"),
    };
    lang.t(zh, en).to_owned()
}

fn field_label(lang: Lang, ty: &LicenseType, key: &str) -> String {
    ty.spec.field(key).map_or_else(
        || key.to_owned(),
        |f| lang.t(&f.label, &f.label_en).to_owned(),
    )
}

fn type_name(lang: Lang, ty: &LicenseType) -> String {
    lang.t(&ty.spec.name, &ty.spec.name_en).to_owned()
}

/// The login form.
pub fn login(lang: Lang, csrf: &str, next: &str, message: Option<&str>) -> String {
    let alert = message
        .map(|m| format!("<div class=\"card err\" role=\"alert\">{}</div>", esc(m)))
        .unwrap_or_default();
    format!(
        "<h1>{title}</h1>{alert}<form method=\"post\" action=\"/login\">{csrf}{next}{lang_f}\
         <label>{id_label}<input type=\"text\" name=\"identifier\" autocomplete=\"username\" required></label>\
         <label>{pw_label}<input type=\"password\" name=\"password\" autocomplete=\"current-password\" required></label>\
         <button class=\"primary\" type=\"submit\">{submit}</button></form>",
        title = lang.t("持证人登录", "Holder login"),
        csrf = hidden("csrf", csrf),
        next = hidden("next", next),
        lang_f = hidden("lang", lang.code()),
        id_label = lang.t("证件号码（身份证号或统一社会信用代码）", "ID number or unified social credit code"),
        pw_label = lang.t("密码", "Password"),
        submit = lang.t("登录", "Log in"),
    )
}

/// What a request asks, in plain words: the entity, the purpose, each
/// license and field, the expiry and the number of reads.
pub fn prompt(lang: Lang, p: &ConsentPrompt) -> String {
    let e = &p.entity;
    let mut h = format!(
        "<div class=\"card\"><dl><dt>{who}</dt><dd>{name}（{sector}）</dd>\
         <dt>{reg}</dt><dd>{uscc_l}: <code>{uscc}</code><br>{filing_l}: {filing}</dd>\
         <dt>{purpose_l}</dt><dd>{purpose}（<code>{code}</code>）</dd></dl></div>",
        who = lang.t("申请用证的机构", "Who asks"),
        name = esc(&e.name),
        sector = esc(&sector(lang, &e.sector)),
        reg = lang.t("登记信息", "Registration"),
        uscc_l = lang.t("统一社会信用代码", "Unified social credit code"),
        uscc = esc(&e.uscc),
        filing_l = lang.t("用证备案号", "Filing number"),
        filing = esc(e.filing_no.as_deref().unwrap_or("-")),
        purpose_l = lang.t("用证事由", "Purpose"),
        purpose = esc(&p.purpose_text),
        code = esc(&p.terms.purpose),
    );
    if let Some(m) = &p.request.binding_message {
        h.push_str(&format!(
            "<div class=\"card warn\"><strong>{}</strong> {}</div>",
            lang.t(
                "核对码（请与柜台显示的一致）：",
                "Binding message (must match what the counter shows):"
            ),
            esc(m)
        ));
    }
    for ((a, ty), found) in p.terms.elements.iter().zip(&p.types).zip(&p.candidates) {
        h.push_str(&format!(
            "<div class=\"card\"><h2>{}</h2>",
            esc(&type_name(lang, ty))
        ));
        if found.is_empty() {
            h.push_str(&format!(
                "<p class=\"err\">{}</p>",
                lang.t(
                    "您没有此类有效证照，无法授权。",
                    "You hold no current license of this type: this request cannot be approved."
                )
            ));
        } else {
            h.push_str(&format!(
                "<p>{}</p><ul>",
                lang.t("将读取的证照：", "Licenses to be read:")
            ));
            for c in found {
                h.push_str(&format!(
                    "<li><code>{}</code> — {}{}</li>",
                    esc(&c.identifier),
                    super::holder::status_text(lang, c.status),
                    c.valid_until
                        .as_deref()
                        .map(|u| format!("，{} {}", lang.t("有效期至", "valid until"), esc(u)))
                        .unwrap_or_default()
                ));
            }
            h.push_str("</ul>");
        }
        h.push_str(&format!(
            "<p>{}</p><ul>",
            lang.t("将读取的信息项：", "Fields to be read:")
        ));
        for f in &a.fields {
            h.push_str(&format!("<li>{}</li>", esc(&field_label(lang, ty, f))));
        }
        h.push_str("</ul>");
        if !a.optional_fields.is_empty() {
            h.push_str(&format!(
                "<p>{}</p>",
                lang.t(
                    "可选信息项（勾选才提供）：",
                    "Optional fields (given only if ticked):"
                )
            ));
            for f in &a.optional_fields {
                h.push_str(&format!(
                    "<label><input type=\"checkbox\" name=\"optional\" value=\"{}.{}\"> {}</label>",
                    esc(&a.license_type),
                    esc(f),
                    esc(&field_label(lang, ty, f))
                ));
            }
        }
        h.push_str("</div>");
    }
    let duration = match p.terms.duration_days {
        None => lang
            .t(
                "一次性授权：读取一次，{h}小时内未使用即失效",
                "Single use: one read, lapses after {h} hours if unused",
            )
            .replace("{h}", &(SINGLE_USE_SECONDS / 3600).to_string()),
        Some(d) => lang
            .t("授权期限：{d}天", "Lasts {d} days")
            .replace("{d}", &d.to_string()),
    };
    h.push_str(&format!(
        "<div class=\"card\"><p>{duration}</p><p>{}{}</p><p>{}</p></div>",
        lang.t("最多读取次数：", "Most reads: "),
        p.terms.max_retrievals,
        lang.t(
            "您可以随时在“我的授权”中撤回授权，撤回立即生效。",
            "You may withdraw this consent at any time under “My consents”; it takes effect at once."
        )
    ));
    h
}

/// The decision buttons of a consent form.
pub fn decision_buttons(lang: Lang, approvable: bool) -> String {
    let approve = if approvable {
        format!(
            "<button class=\"primary\" type=\"submit\" name=\"decision\" value=\"approve\">{}</button>",
            lang.t("同意授权", "Approve")
        )
    } else {
        String::new()
    };
    format!(
        "{approve}<button type=\"submit\" name=\"decision\" value=\"refuse\">{}</button>",
        lang.t("拒绝", "Refuse")
    )
}

/// The consent page of the redirect flow.
pub fn consent_page(lang: Lang, p: &ConsentPrompt, csrf: &str, request_uri: &str) -> String {
    let approvable = p.candidates.iter().all(|c| !c.is_empty());
    format!(
        "<h1>{title}</h1><form method=\"post\" action=\"/authorize/decision\">{csrf}{ru}{lang_f}{body}{buttons}</form>",
        title = lang.t("授权确认", "Consent"),
        csrf = hidden("csrf", csrf),
        ru = hidden("request_uri", request_uri),
        lang_f = hidden("lang", lang.code()),
        body = prompt(lang, p),
        buttons = decision_buttons(lang, approvable),
    )
}

/// The holder's pending backchannel requests.
pub fn requests_page(
    lang: Lang,
    pending: &[ConsentPrompt],
    csrf: &str,
    notice: Option<&str>,
) -> String {
    let mut h = format!(
        "<h1>{}</h1>",
        lang.t("待处理的授权请求", "Pending requests")
    );
    if let Some(n) = notice {
        h.push_str(&format!(
            "<div class=\"card\" role=\"status\">{}</div>",
            esc(n)
        ));
    }
    if pending.is_empty() {
        h.push_str(&format!(
            "<p>{}</p>",
            lang.t("没有待处理的请求。", "Nothing is waiting for you.")
        ));
    }
    for p in pending {
        let approvable = p.candidates.iter().all(|c| !c.is_empty());
        h.push_str(&format!(
            "<form method=\"post\" action=\"/holder/requests/{id}\" class=\"card\">{csrf}{lang_f}{body}{buttons}</form>",
            id = esc(&p.request.public_id),
            csrf = hidden("csrf", csrf),
            lang_f = hidden("lang", lang.code()),
            body = prompt(lang, p),
            buttons = decision_buttons(lang, approvable),
        ));
    }
    h.push_str(&super::holder::nav(lang, csrf));
    h
}

/// The holder's consents with a revoke button each: the entity, the
/// purpose, each license with its fields, the expiry and the reads used.
/// `names` maps client ids to entity names.
pub fn consents_page(
    lang: Lang,
    consents: &[ConsentView],
    names: &std::collections::HashMap<String, String>,
    csrf: &str,
) -> String {
    let mut h = format!("<h1>{}</h1>", lang.t("我的授权", "My consents"));
    if consents.is_empty() {
        h.push_str(&format!(
            "<p>{}</p>",
            lang.t("您尚未授权任何机构。", "You have not given any consent.")
        ));
    }
    for c in consents {
        let status = match c.status.as_str() {
            "active" => lang.t("有效", "active"),
            "revoked" => lang.t("已撤回", "revoked"),
            "expired" => lang.t("已到期", "expired"),
            _ => lang.t("次数已用完", "used up"),
        };
        let revoke = if c.status == "active" {
            format!(
                "<form method=\"post\" action=\"/holder/consents/{}/revoke\">{}<button type=\"submit\">{}</button></form>",
                esc(&c.id),
                hidden("csrf", csrf),
                lang.t("撤回授权", "Revoke")
            )
        } else {
            String::new()
        };
        let mut data = String::new();
        for g in &c.authorization_details {
            data.push_str(&format!(
                "<li><code>{}</code>: {} — {}</li>",
                esc(&g.license_type),
                esc(&g.licenses.join(", ")),
                esc(&g.fields.join(", "))
            ));
        }
        h.push_str(&format!(
            "<section class=\"card consent\" id=\"consent-{id}\"><h2>{entity}</h2><dl>\
             <dt>{p_l}</dt><dd>{purpose}</dd><dt>{d_l}</dt><dd><ul>{data}</ul></dd>\
             <dt>{s_l}</dt><dd class=\"status\" data-status=\"{raw}\">{status}</dd><dt>{e_l}</dt><dd>{expires}</dd>\
             <dt>{r_l}</dt><dd class=\"reads\">{reads}/{max}</dd></dl>{revoke}</section>",
            id = esc(&c.id),
            entity = esc(names.get(&c.entity).unwrap_or(&c.entity)),
            p_l = lang.t("事由", "Purpose"),
            purpose = esc(&c.purpose),
            d_l = lang.t("证照与信息项", "Licenses and fields"),
            s_l = lang.t("状态", "Status"),
            raw = esc(&c.status),
            e_l = lang.t("到期时间", "Expires"),
            expires = esc(&c.expires_at),
            r_l = lang.t("已读 / 上限", "Reads used / allowed"),
            reads = c.retrievals,
            max = c.max_retrievals,
        ));
    }
    h.push_str(&super::holder::nav(lang, csrf));
    h
}

/// The form to show a license.
pub fn show_form(lang: Lang, licenses: &[(String, LicenseType)], csrf: &str) -> String {
    let mut h = format!(
        "<h1>{}</h1><p>{}</p>",
        lang.t("亮证", "Show a license"),
        lang.t(
            "选择一张证照和要出示的信息项，生成一次性授权码，有效期5分钟，仅可读取一次。",
            "Pick a license and the fields to show; you get a one-time code valid for 5 minutes and one read."
        )
    );
    for (identifier, ty) in licenses {
        h.push_str(&format!(
            "<form method=\"post\" action=\"/holder/show\" class=\"card\">{}{}<h2>{} <code>{}</code></h2>",
            hidden("csrf", csrf),
            hidden("identifier", identifier),
            esc(&type_name(lang, ty)),
            esc(identifier)
        ));
        for f in &ty.spec.fields {
            h.push_str(&format!(
                "<label><input type=\"checkbox\" name=\"field\" value=\"{}\"> {}</label>",
                esc(&f.key),
                esc(lang.t(&f.label, &f.label_en))
            ));
        }
        h.push_str(&format!(
            "<button class=\"primary\" type=\"submit\">{}</button></form>",
            lang.t("生成授权码", "Get a code")
        ));
    }
    h.push_str(&super::holder::nav(lang, csrf));
    h
}

/// The code just made for showing a license, with its QR code.
pub fn shown(lang: Lang, s: &crate::oauth::flows::ShownLicense, csrf: &str) -> String {
    let qr = super::holder::qr_data_uri(&s.qr_payload)
        .map(|uri| {
            format!(
                "<p><img id=\"qr\" src=\"{}\" width=\"220\" height=\"220\" alt=\"{}\"></p>",
                esc(&uri),
                lang.t("亮证二维码", "QR code of the license")
            )
        })
        .unwrap_or_default();
    format!(
        "<h1>{}</h1><div class=\"card\"><p>{}</p>{qr}<p><code id=\"show-code\">{}</code></p>\
         <p>{}: <code id=\"qr-payload\">{}</code></p><p>{} {}</p></div>{}",
        lang.t("亮证授权码", "Your code"),
        lang.t("请向工作人员出示：", "Show this to the staff:"),
        esc(&s.code),
        lang.t("二维码内容", "QR payload"),
        esc(&s.qr_payload),
        lang.t("有效期至", "Valid until"),
        esc(&s.expires_at),
        super::holder::nav(lang, csrf)
    )
}
