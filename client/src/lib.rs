//! The Tessera client: the FUSE file system, its block cache and write buffers, and the admin
//! command line.

pub mod admin;
pub mod backup;
pub mod bench;
pub mod blocks;
pub mod closes;
pub mod dev;
pub mod error;
pub mod file_state;
pub mod fs;
pub mod fsck;
pub mod fuse;
pub mod listing;
pub mod locks;
pub mod meta;
pub mod metrics;
pub mod mount;
pub mod open_table;
pub mod web;
pub mod xattr;
pub mod page_cache;
pub mod room;
pub mod stats;
