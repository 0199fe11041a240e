//! The region's durable state: the SQLite database (the only SQL), the group-committing
//! writer that is its one write door, the hash-chained audit log, the signing keys, and
//! the data directory that holds them.
#![expect(
    clippy::disallowed_methods,
    reason = "store/ is the one place that opens write transactions and connections: \
              the writer for the serving process, start-up before it runs, and its tests"
)]

pub mod audit;
pub(crate) mod credentials;
pub(crate) mod data_dir;
pub(crate) mod db;
pub(crate) mod keys;
pub(crate) mod writer;
