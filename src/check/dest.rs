//! The places a clone would write: the destination, `--waldir`, every tablespace path (as `-T`
//! maps it), each probed without creating anything: missing or empty ([`check_usable`], the
//! clone's own rule), writable (`access(2)` on it, or on the nearest directory that exists,
//! where it would be created), and the filesystem under it (type and mount point from
//! `/proc/self/mounts`, the magic number and free space from `statfs`/`statvfs`).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::check::server::{Facts, Tablespace};
use crate::check::Finding;
use crate::error::{self, os_text, Error};
use crate::options::config::{Format, Output};
use crate::options::tablespace::TablespaceMapping;
use crate::options::Config;
use crate::sink::dest::check_usable;

/// What a directory the clone would fill is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirState {
    /// It does not exist (the clone creates it).
    Missing,
    /// An empty directory.
    Empty,
    /// A directory with something in it (the clone refuses it).
    NotEmpty,
    /// Something else is wrong (not a directory, no permission to read it).
    Unusable(String),
}

/// A filesystem, as seen from a path on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fs {
    /// Device number (`st_dev`): places on the same one share its free space.
    pub dev: u64,
    /// Its mount point.
    pub mount: PathBuf,
    /// Its type (`ext4`, `tmpfs`...).
    pub fs_type: String,
    /// `statfs`'s `f_type`.
    pub magic: i64,
    /// Bytes free for an unprivileged user (`f_bavail`).
    pub free: u64,
    /// Its size in bytes.
    pub total: u64,
}

/// One directory a clone would fill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The path, absolute.
    pub path: PathBuf,
    /// What is there now.
    pub state: DirState,
    /// The path when it exists, else the nearest directory above it that does (where it
    /// would be created).
    pub anchor: PathBuf,
    /// Whether this user may write into `anchor`, or why not.
    pub writable: Result<(), String>,
    /// The filesystem under `anchor`, or why it is unknown.
    pub fs: Result<Fs, String>,
}

/// Where a tablespace goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TablespaceTarget {
    /// A relative (in-place) location: inside the data directory.
    InPlace,
    /// A tar file in the destination (`-F t`).
    TarFile,
    /// A directory here: its location, or where `-T` maps it.
    Dir {
        /// Whether `-T` maps it.
        mapped: bool,
        /// The directory.
        place: Place,
    },
}

/// Every place a clone would write.
#[derive(Debug, Clone)]
pub struct Places {
    /// The `-D` directory (`None` for standard output and server-side targets).
    pub dest: Option<Place>,
    /// `--waldir`.
    pub waldir: Option<Place>,
    /// Each user tablespace with where it goes, or why they are unknown.
    pub tablespaces: Result<Vec<(Tablespace, TablespaceTarget)>, String>,
}

impl Places {
    /// Probes the places of `cfg`, the tablespaces as the server listed them.
    pub fn probe(cfg: &Config, facts: &Facts) -> Self {
        let local = cfg.output == Output::Dir;
        let dest = local.then(|| Place::probe(&cfg.dest));
        let waldir = cfg.waldir.as_deref().map(Place::probe);
        let tablespaces = match &facts.sql {
            Ok(sql) => sql.tablespaces.clone().map(|list| {
                list.into_iter()
                    .map(|ts| {
                        let target = tablespace_target(cfg, &ts.location);
                        (ts, target)
                    })
                    .collect()
            }),
            Err(e) => Err(e.reason.clone()),
        };
        Self {
            dest,
            waldir,
            tablespaces,
        }
    }
}

/// Where the tablespace at `location` would go.
fn tablespace_target(cfg: &Config, location: &str) -> TablespaceTarget {
    let location = Path::new(location);
    if !location.is_absolute() {
        return TablespaceTarget::InPlace;
    }
    if cfg.format == Format::Tar || cfg.output != Output::Dir {
        return TablespaceTarget::TarFile;
    }
    let target = cfg.tablespace_mapping.map(location);
    let mapped = target != TablespaceMapping::default().map(location);
    TablespaceTarget::Dir {
        mapped,
        place: Place::probe(&target),
    }
}

impl Place {
    /// Looks at `path` without changing anything.
    pub fn probe(path: &Path) -> Self {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let state = match check_usable(&path) {
            Ok(()) if path.is_dir() => DirState::Empty,
            Ok(()) => DirState::Missing,
            Err(Error::NotEmpty(_)) => DirState::NotEmpty,
            Err(e) => DirState::Unusable(error::chain(&e)),
        };
        let anchor = existing_ancestor(&path);
        Self {
            writable: writable(&anchor),
            fs: filesystem(&anchor),
            path,
            state,
            anchor,
        }
    }
}

/// `path` if it exists, else its nearest ancestor that does.
fn existing_ancestor(path: &Path) -> PathBuf {
    path.ancestors()
        .find(|p| p.symlink_metadata().is_ok())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

fn c_path(path: &Path) -> Result<CString, String> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| "the path holds a NUL byte".into())
}

/// Whether this user may create entries in directory `dir` (`access(2)`, `W_OK | X_OK`).
fn writable(dir: &Path) -> Result<(), String> {
    let c = c_path(dir)?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0 {
        Ok(())
    } else {
        Err(os_text(&std::io::Error::last_os_error()))
    }
}

/// The filesystem under `path` (which exists).
// The statfs/statvfs field types differ between targets: the conversions are not useless on
// all of them.
#[allow(clippy::useless_conversion)]
fn filesystem(path: &Path) -> Result<Fs, String> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).map_err(|e| os_text(&e))?.dev();
    let c = c_path(path)?;
    // SAFETY: both structs are plain data filled in by the kernel; `c` outlives the calls.
    let (vfs, magic) = unsafe {
        let mut vfs: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut vfs) != 0 {
            return Err(os_text(&std::io::Error::last_os_error()));
        }
        let mut fs: libc::statfs = std::mem::zeroed();
        let magic = if libc::statfs(c.as_ptr(), &mut fs) == 0 {
            i64::from(fs.f_type)
        } else {
            0
        };
        (vfs, magic)
    };
    let frsize = u64::from(vfs.f_frsize);
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let (mount, fs_type) = mount_of(&canonical, &mounts)
        .unwrap_or_else(|| (PathBuf::from("/"), magic_name(magic).to_owned()));
    Ok(Fs {
        dev,
        mount,
        fs_type,
        magic,
        free: u64::from(vfs.f_bavail).saturating_mul(frsize),
        total: u64::from(vfs.f_blocks).saturating_mul(frsize),
    })
}

/// The mount point and type of the last-mounted filesystem whose mount point holds `path`,
/// from the text of `/proc/self/mounts`.
pub fn mount_of(path: &Path, mounts: &str) -> Option<(PathBuf, String)> {
    let mut best: Option<(PathBuf, String)> = None;
    for line in mounts.lines() {
        let mut fields = line.split(' ');
        let (Some(_), Some(point), Some(kind)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let point = PathBuf::from(unescape(point));
        let longer = best
            .as_ref()
            .is_none_or(|(b, _)| point.as_os_str().len() >= b.as_os_str().len());
        if path.starts_with(&point) && longer {
            best = Some((point, kind.to_owned()));
        }
    }
    best
}

/// Undoes the octal escapes of `/proc/self/mounts` (`\040` for a blank).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let s = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(s, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The name of a few common `f_type` magic numbers, when `/proc/self/mounts` is unreadable.
fn magic_name(magic: i64) -> &'static str {
    match magic {
        0xEF53 => "ext2/3/4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x0102_1994 => "tmpfs",
        0x794C_7630 => "overlay",
        0x6969 => "nfs",
        0x2FC1_2FC1 => "zfs",
        _ => "unknown",
    }
}

/// The findings about the places: the destination, `--waldir`, every tablespace, unused `-T`.
pub fn findings(cfg: &Config, places: &Places) -> Vec<Finding> {
    let mut out = Vec::new();
    match (&places.dest, &cfg.output) {
        (Some(place), _) => out.push(directory("destination", place, cfg.refresh)),
        (None, Output::Stdout) => out.push(Finding::ok(
            "destination",
            "standard output: nothing is written here",
        )),
        (None, _) => out.push(Finding::ok(
            "destination",
            "a server-side target: nothing is written here",
        )),
    }
    if let Some(place) = &places.waldir {
        out.push(directory("waldir", place, false));
    }
    match &places.tablespaces {
        Ok(list) => {
            out.extend(list.iter().map(|(ts, target)| tablespace(ts, target)));
            let locations: Vec<PathBuf> =
                list.iter().map(|(ts, _)| PathBuf::from(&ts.location)).collect();
            out.extend(cfg.tablespace_mapping.unused(&locations).map(|old| {
                Finding::warning(
                    "tablespace_mapping",
                    format!("-T {} matches no tablespace of the server", old.display()),
                )
                .hint("check the old directory of the mapping")
                .value("old_dir", old.display().to_string())
            }));
        }
        Err(why) => out.push(
            Finding::warning(
                "tablespace",
                format!("the tablespaces could not be listed: {why}"),
            )
            .hint("a clone learns them when the backup starts; map each with -T if its path is in use here"),
        ),
    }
    out
}

/// A directory the clone would fill (`name`: `destination` or `waldir`); with `refresh`, the
/// existing data directory `--refresh` updates in place.
pub fn directory(name: &'static str, place: &Place, refresh: bool) -> Finding {
    let path = place.path.display();
    let finding = match (&place.state, refresh) {
        (DirState::Unusable(why), _) => {
            Finding::problem(name, why.clone()).hint("choose another directory")
        }
        (DirState::NotEmpty, false) => {
            Finding::problem(name, format!("\"{path}\" exists and is not empty"))
                .hint("choose a missing or empty directory, or empty this one")
        }
        (DirState::Missing | DirState::Empty, true) => Finding::problem(
            name,
            format!("\"{path}\" holds no data directory to refresh"),
        )
        .hint("name the stopped standby's data directory"),
        _ => match &place.writable {
            Err(why) => Finding::problem(
                name,
                format!("\"{}\" is not writable: {why}", place.anchor.display()),
            )
            .hint("run as a user who may write there, or choose another directory"),
            Ok(()) => Finding::ok(name, describe(place, refresh)),
        },
    };
    with_place_values(finding, place)
}

/// `"/x" is missing (created under "/"), writable, on ext4 mounted at "/"`.
fn describe(place: &Place, refresh: bool) -> String {
    let path = place.path.display();
    let what = match (&place.state, refresh) {
        (_, true) => format!("\"{path}\" is the data directory to refresh"),
        (DirState::Missing, _) => format!(
            "\"{path}\" is missing (created under \"{}\")",
            place.anchor.display()
        ),
        _ => format!("\"{path}\" is an empty directory"),
    };
    match &place.fs {
        Ok(fs) => format!(
            "{what}, writable, on {} mounted at \"{}\"",
            fs.fs_type,
            fs.mount.display()
        ),
        Err(why) => format!("{what}, writable (its filesystem is unknown: {why})"),
    }
}

fn with_place_values(mut finding: Finding, place: &Place) -> Finding {
    let state = match place.state {
        DirState::Missing => "missing",
        DirState::Empty => "empty",
        DirState::NotEmpty => "not_empty",
        DirState::Unusable(_) => "unusable",
    };
    finding = finding
        .value("path", place.path.display().to_string())
        .value("state", state)
        .value("writable", place.writable.is_ok());
    if let Ok(fs) = &place.fs {
        finding = finding
            .value("fs_type", fs.fs_type.clone())
            .value("fs_magic", format!("{:#x}", fs.magic))
            .value("mount_point", fs.mount.display().to_string())
            .value("free_bytes", fs.free)
            .value("total_bytes", fs.total);
    }
    finding
}

/// One tablespace: mapped by `-T`, or written to its own path here (which must be free).
pub fn tablespace(ts: &Tablespace, target: &TablespaceTarget) -> Finding {
    let name = &ts.name;
    let location = &ts.location;
    let finding = match target {
        TablespaceTarget::InPlace => Finding::ok(
            "tablespace",
            format!("tablespace \"{name}\" is in place (\"{location}\"): it goes into the data directory"),
        ),
        TablespaceTarget::TarFile => Finding::ok(
            "tablespace",
            format!("tablespace \"{name}\" (\"{location}\") goes into a tar file in the destination"),
        ),
        TablespaceTarget::Dir { mapped, place } => {
            let f = tablespace_dir(name, location, *mapped, place);
            with_place_values(f, place).value("mapped", *mapped)
        }
    };
    finding
        .value("tablespace", name.clone())
        .value("location", location.clone())
        .value("bytes", ts.bytes)
}

fn tablespace_dir(name: &str, location: &str, mapped: bool, place: &Place) -> Finding {
    let path = place.path.display();
    let via = if mapped {
        format!("tablespace \"{name}\" (\"{location}\") is mapped by -T to \"{path}\"")
    } else {
        format!("tablespace \"{name}\" goes to its own path \"{location}\" here (no -T)")
    };
    match (&place.state, &place.writable) {
        (DirState::NotEmpty, _) if mapped => Finding::problem(
            "tablespace",
            format!("{via}, which exists and is not empty"),
        )
        .hint("map it to a missing or empty directory"),
        (DirState::NotEmpty, _) => Finding::problem(
            "tablespace",
            format!("{via}, which exists and is not empty (the server's own, if this is its host)"),
        )
        .hint(format!("map it with -T {location}=NEWDIR")),
        (DirState::Unusable(why), _) => Finding::problem("tablespace", format!("{via}: {why}"))
            .hint(format!(
                "map it with -T {location}=NEWDIR to a directory that can be used"
            )),
        (_, Err(why)) => Finding::problem(
            "tablespace",
            format!(
                "{via}, and \"{}\" is not writable: {why}",
                place.anchor.display()
            ),
        )
        .hint(format!(
            "map it with -T {location}=NEWDIR to a writable directory"
        )),
        (DirState::Missing, Ok(())) => {
            Finding::ok("tablespace", format!("{via}, which is missing (created)"))
        }
        (DirState::Empty, Ok(())) => {
            Finding::ok("tablespace", format!("{via}, an empty directory"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Severity;

    #[test]
    fn the_mount_point_is_the_longest_that_holds_the_path() {
        let mounts = "overlay / overlay rw 0 0\n\
                      proc /proc proc rw 0 0\n\
                      /dev/sda1 /srv ext4 rw 0 0\n\
                      tmpfs /srv/my\\040disk tmpfs rw 0 0\n";
        let at =
            |p: &str| mount_of(Path::new(p), mounts).map(|(m, t)| (m.display().to_string(), t));
        assert_eq!(at("/srv/data"), Some(("/srv".into(), "ext4".into())));
        assert_eq!(
            at("/srv/my disk/x"),
            Some(("/srv/my disk".into(), "tmpfs".into()))
        );
        assert_eq!(at("/srvx"), Some(("/".into(), "overlay".into())));
        assert_eq!(at("/tmp"), Some(("/".into(), "overlay".into())));
    }

    /// The destination is probed as the clone would find it, and nothing is created.
    #[test]
    fn places_are_probed_without_creating_anything() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let missing = tmp.path().join("a/b");
        let p = Place::probe(&missing);
        assert_eq!(p.state, DirState::Missing);
        assert_eq!(p.anchor, tmp.path());
        assert!(p.writable.is_ok());
        assert!(p.fs.as_ref().is_ok_and(|fs| fs.total > 0));
        assert!(!tmp.path().join("a").exists());
        let f = directory("destination", &p, false);
        assert_eq!(f.severity, Severity::Ok);
        assert!(
            f.message.contains("is missing (created under"),
            "{}",
            f.message
        );
        assert_eq!(f.values["state"], "missing");

        assert_eq!(Place::probe(tmp.path()).state, DirState::Empty);
        std::fs::write(tmp.path().join("f"), b"x").expect("write");
        let full = Place::probe(tmp.path());
        assert_eq!(full.state, DirState::NotEmpty);
        let f = directory("destination", &full, false);
        assert_eq!(f.severity, Severity::Problem);
        assert!(
            f.message.ends_with("exists and is not empty"),
            "{}",
            f.message
        );
        assert_eq!(directory("destination", &full, true).severity, Severity::Ok);
        let file = Place::probe(&tmp.path().join("f"));
        assert!(matches!(file.state, DirState::Unusable(_)), "{file:?}");

        let mut locked = Place::probe(&missing);
        locked.writable = Err("Permission denied".into());
        let f = directory("destination", &locked, false);
        assert_eq!(f.severity, Severity::Problem);
        assert!(
            f.message.contains("is not writable: Permission denied"),
            "{}",
            f.message
        );
    }

    /// A tablespace whose own path is in use here is a problem unless `-T` maps it elsewhere.
    #[test]
    fn a_tablespace_needs_a_free_path_or_a_mapping() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join("PG_18"), b"").expect("write");
        let location = tmp.path().display().to_string();
        let ts = Tablespace {
            name: "t".into(),
            location: location.clone(),
            bytes: Some(8192),
        };
        let own = TablespaceTarget::Dir {
            mapped: false,
            place: Place::probe(tmp.path()),
        };
        let f = tablespace(&ts, &own);
        assert_eq!(f.severity, Severity::Problem);
        assert_eq!(f.hint, Some(format!("map it with -T {location}=NEWDIR")));
        let mapped = TablespaceTarget::Dir {
            mapped: true,
            place: Place::probe(&tmp.path().join("new")),
        };
        let f = tablespace(&ts, &mapped);
        assert_eq!(f.severity, Severity::Ok, "{}", f.message);
        assert_eq!(f.values["mapped"], true);
        assert_eq!(
            tablespace(&ts, &TablespaceTarget::TarFile).severity,
            Severity::Ok
        );
        let cfg = crate::options::config::tests::config(&[
            "-D",
            "/x",
            "-T",
            &format!("{location}=/elsewhere"),
        ])
        .expect("valid");
        assert!(matches!(
            tablespace_target(&cfg, &location),
            TablespaceTarget::Dir { mapped: true, .. }
        ));
        assert_eq!(
            tablespace_target(&cfg, "pg_tblspc/16384"),
            TablespaceTarget::InPlace
        );
    }
}
