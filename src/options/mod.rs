//! The first stage: the command line as pg_basebackup spells it (`cli`), turned into a checked
//! [`Config`] (`config`), with the `-T` mappings (`tablespace`).

pub mod cli;
pub mod config;
pub mod tablespace;

pub use config::Config;
