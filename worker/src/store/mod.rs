//! Store implementations: `sqlite` for embedded mode, `postgres` for the cluster. Both
//! group-commit and order reads behind earlier writes.

pub mod postgres;
pub mod sqlite;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
