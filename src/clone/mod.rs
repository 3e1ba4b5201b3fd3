//! One clone from start to finish: the run that opens the connections and joins the tasks
//! (`run`), the BASE_BACKUP task (`backup`), `-P` progress (`progress`), the signals that
//! cancel it (`signals`) and the reference manifest of `-i` (`upload`).

pub mod backup;
pub mod progress;
pub mod run;
pub mod signals;
pub mod upload;

pub use run::run;
