//! Who a program runs as and with which limits: user, group, supplementary groups, umask and
//! rlimits.
//!
//! Everything is resolved when the config is read (so that an unknown user is a config error
//! with its line and column, and a reload notices a changed `/etc/passwd`), and kept in an
//! [`Identity`] that a spawn applies between fork and exec with [`Identity::apply_in_child`],
//! which only makes async-signal-safe system calls and never allocates.

use std::ffi::{CStr, CString};
use std::fmt;
use std::sync::OnceLock;

/// `setrlimit(2)`'s resource argument type differs between glibc and musl.
#[cfg(target_env = "gnu")]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type Resource = libc::c_int;

/// A user from the passwd database (or a bare uid that has no entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The name in passwd; the number as text for a uid that has no entry.
    pub name: String,
    pub uid: libc::uid_t,
    /// The primary group from passwd; `None` for a uid that has no entry.
    pub gid: Option<libc::gid_t>,
    /// The home directory from passwd; `None` for a uid that has no entry.
    pub home: Option<String>,
}

/// A group from the group database (or a bare gid that has no entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: libc::gid_t,
}

/// One resource limit, soft and hard, `RLIM_INFINITY` for unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub kind: LimitKind,
    pub soft: u64,
    pub hard: u64,
}

/// The limits a config may set, by their config names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LimitKind {
    Nofile,
    Nproc,
    Core,
    Memlock,
    Stack,
    As,
    Cpu,
}

impl LimitKind {
    pub const ALL: [LimitKind; 7] = [
        LimitKind::Nofile,
        LimitKind::Nproc,
        LimitKind::Core,
        LimitKind::Memlock,
        LimitKind::Stack,
        LimitKind::As,
        LimitKind::Cpu,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LimitKind::Nofile => "nofile",
            LimitKind::Nproc => "nproc",
            LimitKind::Core => "core",
            LimitKind::Memlock => "memlock",
            LimitKind::Stack => "stack",
            LimitKind::As => "as",
            LimitKind::Cpu => "cpu",
        }
    }

    pub fn parse(name: &str) -> Option<LimitKind> {
        LimitKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// What the value counts: sizes may be written like `64MiB`, `cpu` like `1h`.
    pub fn unit(self) -> LimitUnit {
        match self {
            LimitKind::Nofile | LimitKind::Nproc => LimitUnit::Count,
            LimitKind::Core | LimitKind::Memlock | LimitKind::Stack | LimitKind::As => LimitUnit::Bytes,
            LimitKind::Cpu => LimitUnit::Seconds,
        }
    }

    fn resource(self) -> Resource {
        (match self {
            LimitKind::Nofile => libc::RLIMIT_NOFILE,
            LimitKind::Nproc => libc::RLIMIT_NPROC,
            LimitKind::Core => libc::RLIMIT_CORE,
            LimitKind::Memlock => libc::RLIMIT_MEMLOCK,
            LimitKind::Stack => libc::RLIMIT_STACK,
            LimitKind::As => libc::RLIMIT_AS,
            LimitKind::Cpu => libc::RLIMIT_CPU,
        }) as Resource
    }

    /// procwatch's own (soft, hard) limit, which a program inherits unless its config sets one.
    pub fn current(self) -> (u64, u64) {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit fills a plain struct.
        if unsafe { libc::getrlimit(self.resource(), &mut r) } != 0 {
            return (libc::RLIM_INFINITY, libc::RLIM_INFINITY);
        }
        (r.rlim_cur, r.rlim_max)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitUnit {
    Count,
    Bytes,
    Seconds,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = |n: u64| {
            if n == libc::RLIM_INFINITY {
                "unlimited".to_owned()
            } else {
                n.to_string()
            }
        };
        if self.soft == self.hard {
            write!(f, "{}={}", self.kind.name(), v(self.soft))
        } else {
            write!(f, "{}={}/{}", self.kind.name(), v(self.soft), v(self.hard))
        }
    }
}

/// Who a program runs as and with which limits; the default changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    pub user: Option<User>,
    /// The group asked for with `group:`; otherwise the user's primary group is used.
    pub group: Option<Group>,
    /// Supplementary groups (the user's, from the group database, as initgroups(3) sets them);
    /// empty when only `group:` is set.
    pub groups: Vec<libc::gid_t>,
    pub umask: Option<libc::mode_t>,
    /// Sorted by kind, at most one of each.
    pub limits: Vec<Limit>,
}

impl Identity {
    /// The gid the program runs with, if it changes.
    pub fn gid(&self) -> Option<libc::gid_t> {
        self.group
            .as_ref()
            .map(|g| g.gid)
            .or_else(|| self.user.as_ref().and_then(|u| u.gid))
    }

    /// Whether anything is set at all.
    pub fn is_default(&self) -> bool {
        *self == Identity::default()
    }

    /// Applies the identity to the calling process: meant for a freshly forked child, before
    /// exec. Limits first (raising a hard limit needs the privilege the process still has), then
    /// groups, gid and uid, then umask.
    ///
    /// Changing the uid or gid clears the parent-death signal (prctl(2) `PR_SET_PDEATHSIG`):
    /// set that afterwards.
    ///
    /// # Safety
    /// Only async-signal-safe calls, no allocation: safe to call between fork and exec in a
    /// multi-threaded process. It changes the credentials of the calling process for good.
    pub unsafe fn apply_in_child(&self) -> Result<(), i32> {
        let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EPERM);
        for l in &self.limits {
            let r = libc::rlimit {
                rlim_cur: l.soft,
                rlim_max: l.hard,
            };
            // SAFETY: plain syscall on a stack struct.
            if unsafe { libc::setrlimit(l.kind.resource(), &r) } != 0 {
                return Err(errno());
            }
        }
        if let Some(gid) = self.gid() {
            // Raw system calls, not glibc's wrappers: those make every thread of the process
            // change credentials (signalling them), and a CLONE_VM child (see spawn.rs) shares
            // procwatch's memory and thread list. The child is single-threaded: one call is all.
            // SAFETY: the pointer and length describe `self.groups`, which outlives the call.
            if unsafe { libc::syscall(libc::SYS_setgroups, self.groups.len(), self.groups.as_ptr()) } != 0 {
                return Err(errno());
            }
            // SAFETY: plain syscall.
            if unsafe { libc::syscall(libc::SYS_setgid, gid) } != 0 {
                return Err(errno());
            }
        }
        if let Some(u) = &self.user {
            // SAFETY: plain syscall.
            if unsafe { libc::syscall(libc::SYS_setuid, u.uid) } != 0 {
                return Err(errno());
            }
        }
        if let Some(mask) = self.umask {
            // SAFETY: plain syscall; cannot fail.
            unsafe { libc::umask(mask) };
        }
        Ok(())
    }

    /// A one-line description for `--check-config`: `user www-data (33), group www-data (33),
    /// groups 33,4, umask 0027, limits nofile=65536`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(u) = &self.user {
            parts.push(format!("user {} ({})", u.name, u.uid));
        }
        if let Some(gid) = self.gid() {
            match &self.group {
                Some(g) => parts.push(format!("group {} ({})", g.name, g.gid)),
                None => parts.push(format!("group {gid}")),
            }
            let groups: Vec<String> = self.groups.iter().map(u32::to_string).collect();
            parts.push(format!("groups [{}]", groups.join(",")));
        }
        if let Some(m) = self.umask {
            parts.push(format!("umask {m:04o}"));
        }
        if !self.limits.is_empty() {
            let limits: Vec<String> = self.limits.iter().map(Limit::to_string).collect();
            parts.push(format!("limits {}", limits.join(" ")));
        }
        if parts.is_empty() {
            "procwatch's own user and limits".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

/// Calls a getpw*_r/getgr*_r style `lookup` with a buffer that grows while it answers ERANGE;
/// `lookup` returns the call's result code and, on a hit, the entry read from the buffer.
fn with_buffer<T>(what: &str, mut lookup: impl FnMut(&mut [u8]) -> (i32, Option<T>)) -> Result<Option<T>, String> {
    let mut buf = vec![0u8; 1024];
    loop {
        match lookup(&mut buf) {
            (libc::ERANGE, _) if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            (0, found) => return Ok(found),
            // getpwnam(3): these too mean "not found", depending on the NSS module.
            (libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM, _) => return Ok(None),
            (rc, _) => {
                return Err(format!(
                    "cannot read the {what} database: {}",
                    std::io::Error::from_raw_os_error(rc)
                ));
            }
        }
    }
}

/// Looks a user up by name, or by number (`"1000"`); `Ok(None)` if there is no such entry (a
/// bare number with no entry is still a uid).
pub fn lookup_user(text: &str) -> Result<Option<User>, String> {
    let text = text.trim();
    let c = CString::new(text).map_err(|_| "a user name cannot hold a NUL byte".to_owned())?;
    let number = text.parse::<libc::uid_t>().ok();
    let found = with_buffer("user", |buf| {
        // SAFETY: passwd is plain data; getpw*_r fill it and point its strings into `buf`.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let (ptr, len) = (buf.as_mut_ptr().cast(), buf.len());
        let rc = match number {
            // SAFETY: valid pointers, `buf` of the length given.
            Some(uid) => unsafe { libc::getpwuid_r(uid, &mut pw, ptr, len, &mut result) },
            // SAFETY: as above, `c` is NUL-terminated.
            None => unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, ptr, len, &mut result) },
        };
        if rc != 0 || result.is_null() {
            return (rc, None);
        }
        // SAFETY: on success the strings point into `buf`, NUL-terminated.
        let (name, home) = unsafe { (CStr::from_ptr(pw.pw_name), CStr::from_ptr(pw.pw_dir)) };
        let user = User {
            name: name.to_string_lossy().into_owned(),
            uid: pw.pw_uid,
            gid: Some(pw.pw_gid),
            home: Some(home.to_string_lossy().into_owned()),
        };
        (0, Some(user))
    })?;
    Ok(found.or_else(|| {
        number.map(|uid| User {
            name: text.to_owned(),
            uid,
            gid: None,
            home: None,
        })
    }))
}

/// Looks a group up by name, or by number; `Ok(None)` if a name has no entry (a bare number
/// is always accepted).
pub fn lookup_group(text: &str) -> Result<Option<Group>, String> {
    let text = text.trim();
    let c = CString::new(text).map_err(|_| "a group name cannot hold a NUL byte".to_owned())?;
    let number = text.parse::<libc::gid_t>().ok();
    let found = with_buffer("group", |buf| {
        // SAFETY: group is plain data; getgr*_r fill it and point its strings into `buf`.
        let mut gr: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        let (ptr, len) = (buf.as_mut_ptr().cast(), buf.len());
        let rc = match number {
            // SAFETY: valid pointers, `buf` of the length given.
            Some(gid) => unsafe { libc::getgrgid_r(gid, &mut gr, ptr, len, &mut result) },
            // SAFETY: as above, `c` is NUL-terminated.
            None => unsafe { libc::getgrnam_r(c.as_ptr(), &mut gr, ptr, len, &mut result) },
        };
        if rc != 0 || result.is_null() {
            return (rc, None);
        }
        // SAFETY: on success the name points into `buf`, NUL-terminated.
        let name = unsafe { CStr::from_ptr(gr.gr_name) }.to_string_lossy().into_owned();
        (0, Some(Group { name, gid: gr.gr_gid }))
    })?;
    Ok(found.or_else(|| {
        number.map(|gid| Group {
            name: text.to_owned(),
            gid,
        })
    }))
}

/// The supplementary groups of `user` as initgroups(3) would set them, `gid` included.
pub fn supplementary_groups(user: &str, gid: libc::gid_t) -> Result<Vec<libc::gid_t>, String> {
    let c = CString::new(user).map_err(|_| "a user name cannot hold a NUL byte".to_owned())?;
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut n = groups.len() as libc::c_int;
        // SAFETY: `groups` has room for `n` entries; getgrouplist writes at most that many and
        // sets `n` to the number needed.
        let rc = unsafe { libc::getgrouplist(c.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(n.max(0) as usize);
            return Ok(groups);
        }
        if groups.len() >= 1 << 16 {
            return Err(format!("user {user:?} is in too many groups"));
        }
        groups.resize((n.max(0) as usize).max(groups.len() * 2), 0);
    }
}

/// Capabilities (capabilities(7)) this checks for.
pub const CAP_SETGID: u32 = 6;
pub const CAP_SETUID: u32 = 7;
pub const CAP_SYS_RESOURCE: u32 = 24;

/// Whether procwatch holds `cap` in its effective set (`CapEff` in /proc/self/status).
pub fn capable(cap: u32) -> bool {
    static EFFECTIVE: OnceLock<u64> = OnceLock::new();
    let eff = *EFFECTIVE.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapEff:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            })
            // SAFETY: geteuid has no preconditions.
            .unwrap_or(if unsafe { libc::geteuid() } == 0 { u64::MAX } else { 0 })
    });
    cap < 64 && eff & (1 << cap) != 0
}

/// The kernel's ceiling for `nofile`, even for root (`/proc/sys/fs/nr_open`).
pub fn nr_open() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_numbers_resolve() {
        let root = lookup_user("root").unwrap().unwrap();
        assert_eq!((root.uid, root.gid), (0, Some(0)));
        assert_eq!(lookup_user("0").unwrap().unwrap().name, "root");
        assert_eq!(lookup_group("root").unwrap().unwrap().gid, 0);
        // A number with no entry is still an id.
        let bare = lookup_user("4000123").unwrap().unwrap();
        assert_eq!((bare.uid, bare.gid), (4000123, None));
        assert_eq!(lookup_group("4000123").unwrap().unwrap().gid, 4000123);
    }

    #[test]
    fn unknown_names_are_none() {
        assert_eq!(lookup_user("no-such-user-pw").unwrap(), None);
        assert_eq!(lookup_group("no-such-group-pw").unwrap(), None);
        assert!(lookup_user("a\0b").is_err());
    }

    #[test]
    fn supplementary_groups_include_the_primary() {
        let g = supplementary_groups("root", 0).unwrap();
        assert!(g.contains(&0), "{g:?}");
    }

    #[test]
    fn limits_describe_themselves() {
        let l = Limit {
            kind: LimitKind::Nofile,
            soft: 1024,
            hard: libc::RLIM_INFINITY,
        };
        assert_eq!(l.to_string(), "nofile=1024/unlimited");
        assert_eq!(LimitKind::parse("as"), Some(LimitKind::As));
        assert_eq!(LimitKind::parse("files"), None);
        assert_eq!(Identity::default().describe(), "procwatch's own user and limits");
    }
}
