//! Store implementations. `sqlite` is the embedded default: one writer thread that
//! group-commits every batch queued while the previous transaction ran.

pub mod sqlite;

pub use sqlite::SqliteStore;
