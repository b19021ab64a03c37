//! Rebuilds the crate when a migration is added or changed, so
//! `sqlx::migrate!` in `src/db.rs` embeds the current set.

fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
