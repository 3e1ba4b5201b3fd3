//! One clone from start to finish: the run that opens the connections and joins the tasks
//! (`run`), the BASE_BACKUP task (`backup`), `-P` progress (`progress`) and the signals that
//! cancel it (`signals`).

pub mod backup;
pub mod progress;
pub mod run;
pub mod signals;

pub use run::run;
