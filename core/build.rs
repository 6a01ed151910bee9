//! `sqlx::migrate!` embeds `migrations/` at compile time; tell cargo to rebuild when a
//! migration is added or changed (stable Rust cannot track the directory by itself).
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
