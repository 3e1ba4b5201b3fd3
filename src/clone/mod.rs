//! One clone from start to finish: the run that opens the connections and joins the tasks
//! (`run`), the BASE_BACKUP task (`backup`), `-P` progress (`progress`), the WAL-retention
//! guard of `-X fetch` (`guard`), the signals that cancel it (`signals`), the reference
//! manifest of `-i` (`upload`), and `--refresh`, the same run applied in place onto an
//! existing directory (`refresh`).

pub mod backup;
pub mod guard;
pub mod progress;
pub mod refresh;
pub mod run;
pub mod signals;
pub mod upload;

pub use run::run;
