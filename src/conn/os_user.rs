//! The name of the user pgclone runs as: libpq's default role name when none is given.
//! This is the crate's only `getpwuid_r` call.

use std::ffi::CStr;

/// The login name of the effective user from the password database (`getpwuid_r`, as libpq
/// looks it up), else `$USER` (libpq has no such fallback). `None` when neither gives a
/// UTF-8 name.
pub(crate) fn name() -> Option<String> {
    from_passwd().or_else(|| std::env::var("USER").ok())
}

/// The effective user's entry in the password database, its name only.
fn from_passwd() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: all-zero is a valid passwd value (null pointers, zero ids).
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: buf and pwd outlive the call and buflen is buf's length; getpwuid_r writes only
    // into them and sets result to &pwd or null.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: after a successful call pw_name points to a NUL-terminated string inside buf,
    // which is alive until the name is copied out below.
    let name = unsafe { CStr::from_ptr(pwd.pw_name) };
    name.to_str().ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_running_user_has_a_name() {
        assert!(super::name().is_some_and(|n| !n.is_empty()));
    }
}
