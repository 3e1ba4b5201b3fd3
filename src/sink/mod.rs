//! Where the archive bytes land: the plain-format writer (`plain`), the tar-format writer
//! (`tar`), compression codecs (`codec`), writeback and fsync (`writeback`, `durable`), and the
//! destination checks and cleanup (`dest`). Nothing here knows about connections or the clone run.

pub mod codec;
pub mod dest;
pub mod durable;
pub mod plain;
pub mod tar;
pub mod writeback;
