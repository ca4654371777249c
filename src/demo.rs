//! The demo data set: a realistic catalog of six license types, their issuing
//! units with keys, an operator, one client per issuing unit, 1,000 people and
//! 200 organisations with their licenses. Loading is idempotent; credentials
//! go to `DATA_DIR/demo-credentials.json` (mode 0600).

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::app::Services;
use crate::error::{Error, Result};
use crate::licenses::catalog::LicenseTypeSpec;
use crate::licenses::identifier::uscc_check;
use crate::licenses::{HolderInput, Issuer, IssuerActor, PublishRequest};
use crate::oauth::client_auth::NewClient;
use crate::oauth::Role;

/// Number of people in the demo.
pub const PEOPLE: usize = 1000;
/// Number of organisations in the demo.
pub const ORGANISATIONS: usize = 200;

/// A demo client's credentials.
#[derive(Debug, Serialize)]
pub struct DemoClient {
    /// What it is for.
    pub name: String,
    /// Role.
    pub role: Role,
    /// client_id.
    pub client_id: String,
    /// client_secret (use with HTTP Basic at the token endpoint).
    pub client_secret: String,
    /// Issuing unit, for issuers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer_id: Option<String>,
}

/// Contents of `demo-credentials.json`.
#[derive(Debug, Serialize)]
pub struct DemoCredentials {
    /// Base URL of the broker.
    pub base_url: String,
    /// Token endpoint.
    pub token_endpoint: String,
    /// Clients.
    pub clients: Vec<DemoClient>,
    /// Holders with accounts (log in at /login with identifier and password).
    pub holders: Vec<DemoHolder>,
    /// A regulator's console account (log in at /console/login).
    pub regulator: DemoRegulator,
}

/// The demo regulator's console account.
#[derive(Debug, Serialize)]
pub struct DemoRegulator {
    /// Login name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// A demo holder account.
#[derive(Debug, Serialize)]
pub struct DemoHolder {
    /// ID number or USCC (the login name).
    pub identifier: String,
    /// Name.
    pub name: String,
    /// Password.
    pub password: String,
}

fn scenario(
    purpose: &str,
    description: &str,
    types: &[(&str, &[&str])],
    flows: &[crate::policy::Flow],
) -> crate::policy::Scenario {
    crate::policy::Scenario {
        purpose: purpose.into(),
        description: description.into(),
        license_types: types.iter().map(|(t, _)| (*t).to_owned()).collect(),
        fields: types
            .iter()
            .map(|(t, f)| ((*t).to_owned(), f.iter().map(|s| (*s).to_owned()).collect()))
            .collect(),
        max_consent_days: 90,
        max_retrievals: 5,
        flows: flows.to_vec(),
    }
}

/// A bank, a logistics firm and a hospital with approved use lists.
fn demo_entities() -> Vec<(
    &'static str,
    &'static str,
    &'static str,
    Vec<crate::policy::Scenario>,
)> {
    use crate::policy::Flow::*;
    vec![
        (
            "浦江银行股份有限公司",
            "91310000MA1PJBANK",
            "bank",
            vec![
                scenario(
                    "account_opening",
                    "开立银行账户 / opening a bank account",
                    &[
                        (
                            "JMSFZ",
                            &["name", "sex", "birth_date", "address", "id_number"],
                        ),
                        ("YYZZ", &["uscc", "name", "legal_representative", "address"]),
                    ],
                    &[Redirect, Decoupled, Verify],
                ),
                scenario(
                    "loan",
                    "贷款审批 / loan approval",
                    &[("JMSFZ", &["name", "id_number"])],
                    &[Redirect, Decoupled],
                ),
            ],
        ),
        (
            "申城速达物流有限公司",
            "91310000MA1WLGT08",
            "logistics",
            vec![scenario(
                "carrier_onboarding",
                "承运人入驻 / carrier onboarding",
                &[
                    ("JMSFZ", &["name", "id_number"]),
                    (
                        "DLYSJYXKZ",
                        &["permit_no", "operator_name", "uscc", "business_scope"],
                    ),
                    ("JDCJSZ", &["license_no", "name", "vehicle_class"]),
                ],
                &[Redirect, ShowLicense, Verify],
            )],
        ),
        (
            "明珠医院",
            "12310000MB1MYY024",
            "hospital",
            vec![scenario(
                "patient_registration",
                "就诊登记 / patient registration",
                &[("JMSFZ", &["name", "sex", "birth_date", "id_number"])],
                &[ShowLicense, Decoupled],
            )],
        ),
    ]
}

/// A valid unified social credit code built from a 17-character body.
pub fn uscc(body17: &str) -> String {
    format!("{body17}{}", uscc_check(body17).unwrap_or('0'))
}

/// GB 11643 check digit of an 18-digit citizen ID number.
fn citizen_id(body17: &str) -> String {
    const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const C: &[u8; 11] = b"10X98765432";
    let sum: u32 = body17
        .bytes()
        .zip(W)
        .map(|(c, w)| u32::from(c - b'0') * w)
        .sum();
    format!("{body17}{}", C[(sum % 11) as usize] as char)
}

/// A small deterministic generator, so every demo has the same people.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() as usize) % items.len()]
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const SURNAMES: &[&str] = &[
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "郭",
    "何", "林", "罗", "高",
];
const GIVEN: &[&str] = &[
    "伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明",
    "超", "秀英", "桂英", "晓东", "建华", "文博", "子涵", "思远",
];
const ETHNIC: &[&str] = &["汉", "汉", "汉", "汉", "回", "满", "蒙古", "壮"];
const DISTRICTS: &[(&str, &str)] = &[
    ("310101", "黄浦区"),
    ("310104", "徐汇区"),
    ("310105", "长宁区"),
    ("310106", "静安区"),
    ("310107", "普陀区"),
    ("310109", "虹口区"),
    ("310110", "杨浦区"),
    ("310115", "浦东新区"),
];
const ROADS: &[&str] = &[
    "南京东路",
    "淮海中路",
    "衡山路",
    "愚园路",
    "武宁路",
    "四川北路",
    "国定路",
    "世纪大道",
    "张江路",
];
const TRADES: &[&str] = &[
    "科技",
    "贸易",
    "物流",
    "餐饮",
    "商贸",
    "运输",
    "信息技术",
    "食品",
];
const HOSPITALS: &[&str] = &[
    "复旦大学附属中山医院",
    "上海交通大学医学院附属瑞金医院",
    "上海市第一人民医院",
    "上海市第六人民医院",
];

/// The demo issuing units.
pub fn issuers() -> Vec<Issuer> {
    let unit = |body: &str, name: &str, name_en: &str| Issuer {
        id: uscc(body),
        name: name.into(),
        name_en: name_en.into(),
        region: "上海市".into(),
        created_at: String::new(),
    };
    vec![
        unit(
            "11310000002420005",
            "上海市公安局",
            "Shanghai Municipal Public Security Bureau",
        ),
        unit(
            "11310000MB2F00016",
            "上海市市场监督管理局",
            "Shanghai Administration for Market Regulation",
        ),
        unit(
            "11310000002420013",
            "上海市卫生健康委员会",
            "Shanghai Municipal Health Commission",
        ),
        unit(
            "11310000002420021",
            "上海市交通委员会",
            "Shanghai Municipal Transportation Commission",
        ),
    ]
}

fn field(
    key: &str,
    label: &str,
    label_en: &str,
    kind: &str,
    required: bool,
    sensitivity: &str,
) -> Value {
    json!({"key": key, "label": label, "label_en": label_en, "type": kind, "required": required, "sensitivity": sensitivity})
}

fn enum_field(key: &str, label: &str, label_en: &str, values: &[&str], sensitivity: &str) -> Value {
    json!({"key": key, "label": label, "label_en": label_en, "type": "enum", "required": true, "sensitivity": sensitivity, "values": values})
}

/// The demo catalog; `units` are the issuers in the order of [`issuers`].
pub fn catalog(units: &[Issuer]) -> Result<Vec<LicenseTypeSpec>> {
    let (police, market, health, transport) =
        (&units[0].id, &units[1].id, &units[2].id, &units[3].id);
    let specs = json!([
        {
            "code": "JMSFZ", "name": "居民身份证", "name_en": "Resident Identity Card", "issuer": police,
            "holder_kind": "person", "level": "national",
            "validity": {"max_years": 20, "allow_indefinite": true},
            "fields": [
                field("name", "姓名", "Name", "string", true, "personal"),
                enum_field("sex", "性别", "Sex", &["男", "女"], "personal"),
                field("ethnicity", "民族", "Ethnicity", "string", true, "personal"),
                field("birth_date", "出生", "Date of birth", "date", true, "personal"),
                field("address", "住址", "Address", "string", true, "personal"),
                field("id_number", "公民身份号码", "Citizen ID number", "string", true, "sensitive"),
                field("issuing_authority", "签发机关", "Issuing authority", "string", true, "public")
            ]
        },
        {
            "code": "YYZZ", "name": "营业执照", "name_en": "Business License", "issuer": market,
            "holder_kind": "organisation", "level": "national",
            "validity": {"max_years": null, "allow_indefinite": true},
            "fields": [
                field("uscc", "统一社会信用代码", "Unified social credit code", "string", true, "public"),
                field("name", "名称", "Name", "string", true, "public"),
                enum_field("entity_type", "类型", "Type", &["有限责任公司", "股份有限公司", "个人独资企业", "合伙企业"], "public"),
                field("legal_representative", "法定代表人", "Legal representative", "string", true, "personal"),
                field("registered_capital", "注册资本", "Registered capital", "string", true, "public"),
                field("established_on", "成立日期", "Date of establishment", "date", true, "public"),
                field("business_scope", "经营范围", "Business scope", "string", true, "public"),
                field("address", "住所", "Domicile", "string", true, "public")
            ]
        },
        {
            "code": "YSZYZS", "name": "医师执业证书", "name_en": "Physician Practice Certificate", "issuer": health,
            "holder_kind": "person", "level": "national",
            "validity": {"max_years": null, "allow_indefinite": true},
            "fields": [
                field("name", "姓名", "Name", "string", true, "personal"),
                enum_field("sex", "性别", "Sex", &["男", "女"], "personal"),
                field("birth_date", "出生日期", "Date of birth", "date", true, "personal"),
                field("id_number", "身份证号", "Citizen ID number", "string", true, "sensitive"),
                field("certificate_no", "证书编码", "Certificate number", "string", true, "public"),
                enum_field("qualification_level", "医师级别", "Level", &["执业医师", "执业助理医师"], "public"),
                enum_field("practice_category", "执业类别", "Category", &["临床", "中医", "口腔", "公共卫生"], "public"),
                field("practice_scope", "执业范围", "Scope of practice", "string", true, "public"),
                field("practice_institution", "执业地点", "Place of practice", "string", true, "public")
            ]
        },
        {
            "code": "DLYSJYXKZ", "name": "道路运输经营许可证", "name_en": "Road Transport Operation Permit", "issuer": transport,
            "holder_kind": "organisation", "level": "national",
            "validity": {"max_years": 4, "allow_indefinite": false},
            "fields": [
                field("permit_no", "经营许可证号", "Permit number", "string", true, "public"),
                field("operator_name", "业户名称", "Operator", "string", true, "public"),
                field("uscc", "统一社会信用代码", "Unified social credit code", "string", true, "public"),
                field("address", "地址", "Address", "string", true, "public"),
                field("business_scope", "经营范围", "Business scope", "string", true, "public"),
                field("economic_type", "经济类型", "Economic type", "string", false, "public")
            ]
        },
        {
            "code": "SPJYXKZ", "name": "食品经营许可证", "name_en": "Food Business License", "issuer": market,
            "holder_kind": "organisation", "level": "national",
            "validity": {"max_years": 5, "allow_indefinite": false},
            "fields": [
                field("permit_no", "许可证编号", "License number", "string", true, "public"),
                field("operator_name", "经营者名称", "Operator", "string", true, "public"),
                field("uscc", "社会信用代码", "Unified social credit code", "string", true, "public"),
                field("legal_representative", "法定代表人（负责人）", "Legal representative", "string", true, "personal"),
                field("premises", "经营场所", "Premises", "string", true, "public"),
                field("main_business", "主体业态", "Main business form", "string", true, "public"),
                field("business_items", "经营项目", "Business items", "string", true, "public")
            ]
        },
        {
            "code": "JDCJSZ", "name": "机动车驾驶证", "name_en": "Motor Vehicle Driving License", "issuer": police,
            "holder_kind": "person", "level": "national",
            "validity": {"max_years": 10, "allow_indefinite": true},
            "fields": [
                field("license_no", "证号", "License number", "string", true, "sensitive"),
                field("name", "姓名", "Name", "string", true, "personal"),
                enum_field("sex", "性别", "Sex", &["男", "女"], "personal"),
                field("nationality", "国籍", "Nationality", "string", true, "personal"),
                field("address", "住址", "Address", "string", true, "personal"),
                field("birth_date", "出生日期", "Date of birth", "date", true, "personal"),
                field("first_issue_date", "初次领证日期", "First issued", "date", true, "public"),
                enum_field("vehicle_class", "准驾车型", "Vehicle class", &["A1", "A2", "B1", "B2", "C1", "C2"], "public")
            ]
        }
    ]);
    serde_json::from_value(specs).map_err(Error::internal)
}

/// The day the demo's validity periods were written against. They are moved
/// by the days since, so that each demo license keeps its standing (valid,
/// near its end, expired) on whatever day the demo is loaded, instead of
/// expiring one by one as the calendar passes their fixed dates.
const DEMO_EPOCH: time::Date = time::macros::date!(2026 - 11 - 23);

/// `date` (YYYY-MM-DD) moved by the days from [`DEMO_EPOCH`] to `today`.
fn moved(date: &str, today: time::Date) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let days = (today - DEMO_EPOCH).whole_days();
    time::Date::parse(date, &fmt)
        .ok()
        .and_then(|d| d.checked_add(time::Duration::days(days)))
        .and_then(|d| d.format(&fmt).ok())
        .unwrap_or_else(|| date.to_owned())
}

/// A demo publication; `holder` is (kind, identifier, name), `validity`
/// (from, until) as of [`DEMO_EPOCH`].
fn publication(
    license_type: &str,
    holder: (&str, &str, &str),
    fields: Value,
    validity: (String, Option<String>),
    source_ref: String,
) -> Result<PublishRequest> {
    let (kind, id, name) = holder;
    let today = crate::store::now().date();
    let (from, until) = (
        moved(&validity.0, today),
        validity.1.map(|u| moved(&u, today)),
    );
    let Value::Object(fields) = fields else {
        return Err(Error::internal("demo fields must be an object"));
    };
    Ok(PublishRequest {
        license_type: license_type.into(),
        identifier: None,
        source_ref: Some(source_ref),
        holder: HolderInput {
            kind: serde_json::from_value(json!(kind)).map_err(Error::internal)?,
            identifier: id.into(),
            name: name.into(),
        },
        fields: Map::from_iter(fields),
        valid_from: from,
        valid_until: until,
    })
}

/// Every demo publication, per issuing unit index.
fn publications() -> Result<Vec<(usize, PublishRequest)>> {
    let mut rng = Lcg(20221118);
    let mut out = Vec::new();
    for i in 0..PEOPLE {
        let name = format!("{}{}", rng.pick(SURNAMES), rng.pick(GIVEN));
        let (code, district) = DISTRICTS[(rng.next() as usize) % DISTRICTS.len()];
        let year = 1950 + rng.below(55);
        let (month, day) = (1 + rng.below(12), 1 + rng.below(28));
        let birth = format!("{year}-{month:02}-{day:02}");
        // 6-digit region, 8-digit birth date, 2-digit sequence, sex digit (odd: male), check digit.
        let sex_digit = rng.below(10);
        let id = citizen_id(&format!(
            "{code}{year}{month:02}{day:02}{:02}{sex_digit}",
            i % 100
        ));
        let sex = if sex_digit % 2 == 1 { "男" } else { "女" };
        let address = format!(
            "上海市{district}{}{}号",
            rng.pick(ROADS),
            1 + rng.below(999)
        );
        let issued = 2016 + rng.below(10);
        let (from, until) = (
            format!("{issued}-{month:02}-{day:02}"),
            Some(format!("{}-{month:02}-{day:02}", issued + 10)),
        );
        let fields = json!({"name": name, "sex": sex, "ethnicity": rng.pick(ETHNIC), "birth_date": birth, "address": address,
                            "id_number": id, "issuing_authority": format!("上海市公安局{district}分局")});
        out.push((
            0,
            publication(
                "JMSFZ",
                ("person", &id, &name),
                fields,
                (from, until),
                format!("JMSFZ-{i:05}"),
            )?,
        ));
        if i % 10 < 3 {
            let first = 2000 + rng.below(20);
            let fields = json!({"license_no": id, "name": name, "sex": sex, "nationality": "中国", "address": address,
                                "birth_date": birth, "first_issue_date": format!("{first}-{month:02}-{day:02}"),
                                "vehicle_class": rng.pick(&["C1", "C1", "C2", "B2", "A2"])});
            let from = format!("{}-{month:02}-{day:02}", 2019 + rng.below(6));
            let until = format!(
                "{}{}",
                from[..4].parse::<u64>().unwrap_or(2020) + 6,
                &from[4..]
            );
            out.push((
                0,
                publication(
                    "JDCJSZ",
                    ("person", &id, &name),
                    fields,
                    (from, Some(until)),
                    format!("JDCJSZ-{i:05}"),
                )?,
            ));
        }
        if i % 20 == 7 {
            let fields = json!({"name": name, "sex": sex, "birth_date": birth, "id_number": id,
                                "certificate_no": format!("1103100000{i:05}"),
                                "qualification_level": "执业医师", "practice_category": rng.pick(&["临床", "中医", "口腔"]),
                                "practice_scope": rng.pick(&["内科专业", "外科专业", "儿科专业", "口腔专业"]),
                                "practice_institution": rng.pick(HOSPITALS)});
            out.push((
                2,
                publication(
                    "YSZYZS",
                    ("person", &id, &name),
                    fields,
                    (format!("{}-03-01", 2010 + rng.below(14)), None),
                    format!("YSZYZS-{i:05}"),
                )?,
            ));
        }
    }
    for i in 0..ORGANISATIONS {
        let code = uscc(&format!(
            "9131{:04}MA1{:02}{:05}",
            100 + (i % 20) * 5,
            i % 100,
            10000 + i * 7
        ));
        let trade = rng.pick(TRADES);
        let name = format!(
            "上海{}{}{}有限公司",
            rng.pick(&["浦江", "申城", "东方", "明珠", "长江", "外滩"]),
            rng.pick(&["华", "信", "通", "达", "源", "泰"]),
            trade
        );
        let (_, district) = DISTRICTS[(rng.next() as usize) % DISTRICTS.len()];
        let address = format!(
            "上海市{district}{}{}号",
            rng.pick(ROADS),
            1 + rng.below(999)
        );
        let rep = format!("{}{}", rng.pick(SURNAMES), rng.pick(GIVEN));
        let est = format!(
            "{}-{:02}-{:02}",
            2000 + rng.below(24),
            1 + rng.below(12),
            1 + rng.below(28)
        );
        let fields = json!({"uscc": code, "name": name, "entity_type": "有限责任公司", "legal_representative": rep,
                            "registered_capital": format!("人民币{}万元", 100 * (1 + rng.below(50))), "established_on": est,
                            "business_scope": format!("{trade}相关业务（依法须经批准的项目，经相关部门批准后方可开展经营活动）"),
                            "address": address});
        out.push((
            1,
            publication(
                "YYZZ",
                ("organisation", &code, &name),
                fields,
                (est.clone(), None),
                format!("YYZZ-{i:05}"),
            )?,
        ));
        if i % 10 < 3 {
            let from = format!("{}-{:02}-15", 2021 + rng.below(5), 1 + rng.below(12));
            let until = format!(
                "{}{}",
                from[..4].parse::<u64>().unwrap_or(2021) + 5,
                &from[4..]
            );
            let fields = json!({"permit_no": format!("JY231{:011}", 10000000 + i), "operator_name": name, "uscc": code,
                                "legal_representative": rep, "premises": address, "main_business": "餐饮服务经营者",
                                "business_items": "热食类食品制售"});
            out.push((
                1,
                publication(
                    "SPJYXKZ",
                    ("organisation", &code, &name),
                    fields,
                    (from, Some(until)),
                    format!("SPJYXKZ-{i:05}"),
                )?,
            ));
        }
        if i % 5 == 2 {
            let from = format!("{}-{:02}-01", 2023 + rng.below(3), 1 + rng.below(12));
            let until = format!(
                "{}{}",
                from[..4].parse::<u64>().unwrap_or(2023) + 4,
                &from[4..]
            );
            let fields = json!({"permit_no": format!("沪交运管许可货字{:09}号", 310000000 + i), "operator_name": name, "uscc": code,
                                "address": address, "business_scope": "道路普通货物运输", "economic_type": "有限责任公司"});
            out.push((
                3,
                publication(
                    "DLYSJYXKZ",
                    ("organisation", &code, &name),
                    fields,
                    (from, Some(until)),
                    format!("DLYSJYXKZ-{i:05}"),
                )?,
            ));
        }
    }
    Ok(out)
}

/// Loads the demo data unless it is already there, and prints where its credentials are.
pub async fn load(services: &Services) -> Result<()> {
    let path = services.config.data_dir.join("demo-credentials.json");
    let units = issuers();
    if services.store.issuer(&units[0].id).await?.is_some() {
        if !path.exists() {
            return Err(Error::Conflict(format!(
                "the database holds part of the demo data but {} is missing; start again with an empty data directory",
                path.display()
            )));
        }
        tracing::info!("demo data already loaded");
        println!("demo data already loaded; credentials: {}", path.display());
        return Ok(());
    }
    let base = services.config.public_url.clone();
    let system = crate::audit::Actor::system("demo");
    let mut clients = Vec::new();
    let mut add_client = |created: crate::oauth::client_auth::CreatedClient, name: &str| {
        clients.push(DemoClient {
            name: name.into(),
            role: created.role,
            client_id: created.client_id,
            client_secret: created.client_secret.unwrap_or_default(),
            issuer_id: created.issuer_id,
        });
    };
    let op = services
        .clients
        .create(
            &system,
            NewClient {
                name: "大数据中心 operator".into(),
                role: Role::Operator,
                issuer_id: None,
                jwks: None,
                jwks_uri: None,
            },
        )
        .await?;
    add_client(op, "大数据中心 operator");
    let regulator = services
        .clients
        .create(
            &system,
            NewClient {
                name: "综合管理部门 regulator".into(),
                role: Role::Regulator,
                issuer_id: None,
                jwks: None,
                jwks_uri: None,
            },
        )
        .await?;
    add_client(regulator, "综合管理部门 regulator");
    let mut actors = Vec::new();
    for unit in &units {
        services
            .library
            .create_issuer(&system, unit.clone())
            .await?;
        let c = services
            .clients
            .create(
                &system,
                NewClient {
                    name: unit.name.clone(),
                    role: Role::Issuer,
                    issuer_id: Some(unit.id.clone()),
                    jwks: None,
                    jwks_uri: None,
                },
            )
            .await?;
        actors.push(IssuerActor {
            client_id: c.client_id.clone(),
            issuer_id: unit.id.clone(),
        });
        add_client(c, &unit.name);
    }
    for spec in catalog(&units)? {
        services.library.create_type(&system, spec).await?;
    }
    for (name, uscc_body, sector, scenarios) in demo_entities() {
        let applied = crate::entities::apply(
            services,
            crate::entities::Application {
                name: name.into(),
                uscc: uscc(uscc_body),
                sector: sector.into(),
                contact: "demo@example.org".into(),
                redirect_uris: vec!["https://127.0.0.1/callback".into()],
                jwks: None,
                jwks_uri: None,
                dpop_bound_access_tokens: false,
                scenarios,
            },
        )
        .await?;
        let approved = crate::entities::approve(
            services,
            &system,
            &applied.id,
            crate::entities::Verdict {
                filing_no: Some(format!("沪用证备{}", &applied.id[4..10])),
                reason: None,
            },
        )
        .await?;
        add_client(approved.credentials, name);
    }
    let pubs = publications()?;
    let total = pubs.len();
    // Three people (each with an ID card and a driving license) and one
    // organisation get holder accounts, to try the consent pages with.
    let mut account_holders: Vec<crate::licenses::HolderInput> = Vec::new();
    for (_, req) in &pubs {
        let kind = req.holder.kind;
        let taken = account_holders.iter().filter(|h| h.kind == kind).count();
        let wanted = if kind == crate::licenses::catalog::HolderKind::Person {
            3
        } else {
            1
        };
        if taken < wanted
            && !account_holders
                .iter()
                .any(|h| h.identifier == req.holder.identifier)
        {
            account_holders.push(req.holder.clone());
        }
    }
    for (unit, req) in pubs {
        services.library.publish(&actors[unit], req).await?;
    }
    let mut holders = Vec::new();
    for h in account_holders {
        let password = crate::keys::random_token(12)?;
        crate::holders::set_password(services, &h.identifier, &password).await?;
        holders.push(DemoHolder {
            identifier: h.identifier,
            name: h.name,
            password,
        });
    }
    let regulator = DemoRegulator {
        username: "regulator".into(),
        password: crate::keys::random_token(12)?,
    };
    crate::console::set_account(
        services,
        &regulator.username,
        "市大数据中心监管员",
        &regulator.password,
    )
    .await?;
    let creds = DemoCredentials {
        token_endpoint: format!("{base}/token"),
        base_url: base.clone(),
        clients,
        holders,
        regulator,
    };
    let text = serde_json::to_string_pretty(&creds).map_err(Error::internal)?;
    let _ = std::fs::remove_file(&path);
    crate::keys::write_private_file(&path, text.as_bytes())?;
    let issuer = &creds.clients[2];
    println!(
        "demo data loaded: {} issuing units, 6 license types, 3 entities with approved use lists (a bank, a logistics firm, a hospital), {PEOPLE} people and {ORGANISATIONS} organisations, {total} licenses.\n\
         credentials: {}\n\
         try:\n  \
         TOKEN=$(curl -s -u '{}:{}' -d grant_type=client_credentials {base}/token | jq -r .access_token)\n  \
         curl -s -H \"Authorization: Bearer $TOKEN\" '{base}/issuer/v1/licenses?limit=3'\n  \
         curl -s {base}/catalog/v1/license-types\n  \
         open {base}/login   (holder accounts are in the credentials file)\n  \
         open {base}/console/login   (the regulator's account is in the credentials file)\n  \
         open {base}/openapi.json",
        units.len(),
        path.display(),
        issuer.client_id,
        issuer.client_secret,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_periods_keep_their_distance_to_today() {
        let epoch = DEMO_EPOCH;
        assert_eq!(moved("2026-11-26", epoch), "2026-11-26");
        let later = time::macros::date!(2031 - 03 - 01);
        // 3 days after the epoch stays 3 days after today.
        let moved_until = moved("2026-11-26", later);
        let parsed = time::Date::parse(
            &moved_until,
            &time::macros::format_description!("[year]-[month]-[day]"),
        )
        .expect("a date");
        assert_eq!((parsed - later).whole_days(), 3);
        assert_eq!(moved("not a date", later), "not a date");
    }
}
