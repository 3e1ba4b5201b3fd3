//! `-T OLDDIR=NEWDIR`: tablespace relocation, parsed and applied as pg_basebackup does.

use std::path::{Component, Path, PathBuf};

use crate::error::Error;

/// The `-T` mappings, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TablespaceMapping {
    pairs: Vec<(PathBuf, PathBuf)>,
}

impl TablespaceMapping {
    /// Parses every `-T` argument.
    pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<Self, Error> {
        let pairs = args
            .iter()
            .map(|a| parse_one(a.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(Self { pairs })
    }

    /// Where a tablespace at `location` goes: its mapping, or `location` itself.
    pub fn map(&self, location: &Path) -> PathBuf {
        let location = canonicalize(location);
        self.pairs
            .iter()
            .find(|(old, _)| *old == location)
            .map(|(_, new)| new.clone())
            .unwrap_or(location)
    }

    /// Old directories that matched none of `locations` (worth a warning).
    pub fn unused<'a>(&'a self, locations: &[PathBuf]) -> impl Iterator<Item = &'a Path> {
        let canon: Vec<PathBuf> = locations.iter().map(|l| canonicalize(l)).collect();
        self.pairs
            .iter()
            .filter(move |(old, _)| !canon.contains(old))
            .map(|(old, _)| old.as_path())
    }
}

fn parse_one(arg: &str) -> Result<(PathBuf, PathBuf), Error> {
    let mut old = String::new();
    let mut new = String::new();
    let mut seen_eq = false;
    let mut chars = arg.chars().peekable();
    while let Some(c) = chars.next() {
        let dst = if seen_eq { &mut new } else { &mut old };
        match c {
            '\\' if chars.peek() == Some(&'=') => {
                dst.push('=');
                chars.next();
            }
            '=' if seen_eq => {
                return Err(Error::Usage(
                    "multiple \"=\" signs in tablespace mapping".into(),
                ))
            }
            '=' => seen_eq = true,
            c => dst.push(c),
        }
    }
    if !seen_eq || old.is_empty() || new.is_empty() {
        return Err(Error::Usage(format!(
            "invalid tablespace mapping format \"{arg}\", must be \"OLDDIR=NEWDIR\""
        )));
    }
    if !old.starts_with('/') {
        return Err(Error::Usage(format!(
            "old directory is not an absolute path in tablespace mapping: {old}"
        )));
    }
    if !new.starts_with('/') {
        return Err(Error::Usage(format!(
            "new directory is not an absolute path in tablespace mapping: {new}"
        )));
    }
    Ok((canonicalize(Path::new(&old)), canonicalize(Path::new(&new))))
}

/// Lexical clean-up like PostgreSQL's `canonicalize_path`: no `.`, no trailing or doubled
/// slashes, `..` applied to the preceding component.
pub fn canonicalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            c => out.push(c.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_maps() {
        let m = TablespaceMapping::parse(&["/srv/ts1/=/new/ts1", r"/a\=b=/c"]).expect("valid");
        assert_eq!(m.map(Path::new("/srv/ts1")), PathBuf::from("/new/ts1"));
        assert_eq!(m.map(Path::new("/srv//ts1/.")), PathBuf::from("/new/ts1"));
        assert_eq!(m.map(Path::new("/a=b")), PathBuf::from("/c"));
        assert_eq!(m.map(Path::new("/other")), PathBuf::from("/other"));
        let unused: Vec<_> = m.unused(&[PathBuf::from("/srv/ts1")]).collect();
        assert_eq!(unused, [Path::new("/a=b")]);
    }

    #[test]
    fn rejects_like_pg_basebackup() {
        for (arg, msg) in [
            (
                "/a",
                "invalid tablespace mapping format \"/a\", must be \"OLDDIR=NEWDIR\"",
            ),
            (
                "/a=",
                "invalid tablespace mapping format \"/a=\", must be \"OLDDIR=NEWDIR\"",
            ),
            ("/a=/b=/c", "multiple \"=\" signs in tablespace mapping"),
            (
                "a=/b",
                "old directory is not an absolute path in tablespace mapping: a",
            ),
            (
                "/a=b",
                "new directory is not an absolute path in tablespace mapping: b",
            ),
        ] {
            match TablespaceMapping::parse(&[arg]) {
                Err(Error::Usage(m)) => assert_eq!(m, msg),
                other => panic!("{arg}: {other:?}"),
            }
        }
    }
}
