// A new migration file must rebuild the crate: `sqlx::migrate!` embeds them at compile time.
// One line per backend's directory (each has its own `sqlx::migrate!`).
fn main() {
    println!("cargo:rerun-if-changed=migrations/sqlite");
    println!("cargo:rerun-if-changed=migrations/postgres");
}
