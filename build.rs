// sqlx::migrate! embeds migrations/ at compile time, but stable Rust cannot
// tell cargo it read those files: without this, a new migration is missing
// from an incremental build until something else changes (sqlx's documented
// build script, `sqlx migrate build-script`).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
