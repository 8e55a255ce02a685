//! A thread group's context switches from the kernel's taskstats interface
//! (Documentation/accounting/taskstats.rst), asked over generic netlink: one request per
//! process whatever its thread count, and the answer counts the group's exited threads too.
//! /proc has no such figure: `status` gives one thread's switches, so a process costs one
//! `task/TID/status` read (9 µs here) per live thread, and a thread that has exited takes its
//! switches with it. A request costs about 2.3 µs here.
//!
//! The kernel answers only a caller with CAP_NET_ADMIN (the command is `GENL_ADMIN_PERM`), so
//! [`Taskstats::open`] proves it can ask before anyone relies on it; without it procwatch reads
//! `status` as before. The request names a process by its PID: the caller asks right after
//! reading the process's `stat` through its kept fd, and PIDs are handed out cyclically, so
//! that PID could name another process only after a wrap of the whole PID space within those
//! microseconds.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The generic-netlink family the kernel registers for taskstats.
const FAMILY_NAME: &[u8] = b"TASKSTATS\0";
/// The controller family (`GENL_ID_CTRL`) and what procwatch asks it.
const GENL_ID_CTRL: u16 = libc::NLMSG_MIN_TYPE as u16;
const CTRL_CMD_GETFAMILY: u8 = libc::CTRL_CMD_GETFAMILY as u8;
const CTRL_ATTR_FAMILY_ID: u16 = libc::CTRL_ATTR_FAMILY_ID as u16;
const CTRL_ATTR_FAMILY_NAME: u16 = libc::CTRL_ATTR_FAMILY_NAME as u16;
/// linux/taskstats.h.
const TASKSTATS_CMD_GET: u8 = 1;
const TASKSTATS_CMD_ATTR_TGID: u16 = 2;
const TASKSTATS_TYPE_STATS: u16 = 3;
const TASKSTATS_TYPE_AGGR_TGID: u16 = 5;
/// Offsets of `nvcsw` and `nivcsw` in `struct taskstats`, there since its version 2 (Linux
/// 2.6.19); the struct only ever grows at its end.
const NVCSW_AT: usize = 272;
const NIVCSW_AT: usize = 280;
const NLMSG_HDRLEN: usize = 16;
const GENL_HDRLEN: usize = 4;
const NLA_HDRLEN: usize = 4;
/// The type bits of an attribute (without NLA_F_NESTED and NLA_F_NET_BYTEORDER).
const NLA_TYPE_MASK: u16 = 0x3fff;

/// Why taskstats cannot be used here: procwatch then reads /proc/PID/task/TID/status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open a generic netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("the kernel offers no taskstats (CONFIG_TASKSTATS is off, or not in this network namespace)")]
    NoFamily,
    #[error("the kernel refused a taskstats request ({0}): it needs CAP_NET_ADMIN")]
    Refused(#[source] io::Error),
    #[error("taskstats request failed: {0}")]
    Request(#[source] io::Error),
}

/// A thread group's context switches, its exited threads included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Switches {
    pub voluntary: u64,
    pub involuntary: u64,
}

/// A netlink socket that asks the kernel for thread groups' taskstats.
pub struct Taskstats {
    fd: OwnedFd,
    family: u16,
    seq: u32,
    /// Answers: a thread group's is about 600 bytes.
    buf: Vec<u8>,
}

impl Taskstats {
    /// Opens the socket, finds the taskstats family, and asks for procwatch's own thread
    /// group to prove that the kernel answers it.
    pub fn open() -> Result<Taskstats, Error> {
        // SAFETY: plain socket(2); the fd returned is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_GENERIC,
            )
        };
        if fd < 0 {
            return Err(Error::Socket(io::Error::last_os_error()));
        }
        // SAFETY: just opened, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut ts = Taskstats {
            fd,
            family: 0,
            seq: 0,
            buf: vec![0; 8192],
        };
        let answer = match ts.request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, CTRL_ATTR_FAMILY_NAME, FAMILY_NAME) {
            Ok(a) => a,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Err(Error::NoFamily),
            Err(e) => return Err(Error::Request(e)),
        };
        let family = attrs(answer)
            .find(|&(t, _)| t == CTRL_ATTR_FAMILY_ID)
            .and_then(|(_, v)| Some(u16::from_ne_bytes(v.get(..2)?.try_into().ok()?)));
        ts.family = family.ok_or(Error::NoFamily)?;
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() };
        match ts.ask(me) {
            Ok(Some(_)) => Ok(ts),
            Ok(None) => Err(Error::Request(io::Error::from(io::ErrorKind::InvalidData))),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => Err(Error::Refused(e)),
            Err(e) => Err(Error::Request(e)),
        }
    }

    /// The context switches of the thread group `tgid`; `None` if it is gone.
    pub fn switches(&mut self, tgid: i32) -> Option<Switches> {
        self.ask(tgid).ok().flatten()
    }

    fn ask(&mut self, tgid: i32) -> io::Result<Option<Switches>> {
        let pid = u32::try_from(tgid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let answer = self.request(
            self.family,
            TASKSTATS_CMD_GET,
            TASKSTATS_CMD_ATTR_TGID,
            &pid.to_ne_bytes(),
        )?;
        let Some((_, aggr)) = attrs(answer).find(|&(t, _)| t == TASKSTATS_TYPE_AGGR_TGID) else {
            return Ok(None);
        };
        let Some((_, stats)) = attrs(aggr).find(|&(t, _)| t == TASKSTATS_TYPE_STATS) else {
            return Ok(None);
        };
        let u64_at = |at: usize| Some(u64::from_ne_bytes(stats.get(at..at + 8)?.try_into().ok()?));
        let version = stats.get(..2).map_or(0, |v| u16::from_ne_bytes([v[0], v[1]]));
        if version < 2 {
            return Ok(None);
        }
        Ok(u64_at(NVCSW_AT)
            .zip(u64_at(NIVCSW_AT))
            .map(|(voluntary, involuntary)| Switches { voluntary, involuntary }))
    }

    /// Sends one request carrying one attribute and returns the attributes of its answer.
    /// Generic netlink handles a request within sendto(2): its answer (or error) is queued
    /// before the call returns, so it is received without waiting, and a missing answer is an
    /// error at once, never a stalled scrape. Anything else queued is skipped by its sequence
    /// number.
    fn request(&mut self, family: u16, cmd: u8, attr: u16, value: &[u8]) -> io::Result<&[u8]> {
        self.seq = self.seq.wrapping_add(1);
        let attr_len = NLA_HDRLEN + value.len();
        let len = NLMSG_HDRLEN + GENL_HDRLEN + align4(attr_len);
        // Built on the stack: this runs for every process at every scrape. The attribute
        // values are a PID and the family's name, well within it.
        let mut msg = [0u8; 64];
        if len > msg.len() {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let mut at = 0;
        for part in [
            &(len as u32).to_ne_bytes()[..],
            &family.to_ne_bytes(),
            &(libc::NLM_F_REQUEST as u16).to_ne_bytes(),
            &self.seq.to_ne_bytes(),
            &0u32.to_ne_bytes(),
            // genlmsghdr: command, version 1, reserved.
            &[cmd, 1, 0, 0],
            &(attr_len as u16).to_ne_bytes(),
            &attr.to_ne_bytes(),
            value,
        ] {
            msg[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        let msg = &msg[..len];
        // SAFETY: sockaddr_nl is plain data; all zeroes is the kernel's address (nl_pid 0).
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: a valid fd, buffer and address of the sizes given.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&raw const to).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        loop {
            // SAFETY: recv writes at most `buf.len()` bytes into the buffer.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let got = &self.buf[..n as usize];
            let word = |at: usize| got.get(at..at + 4).map(|b| u32::from_ne_bytes(b.try_into().unwrap()));
            let (Some(len), Some(seq)) = (word(0), word(8)) else {
                return Err(io::Error::from(io::ErrorKind::InvalidData));
            };
            let len = (len as usize).min(got.len());
            if seq != self.seq {
                continue;
            }
            let kind = u16::from_ne_bytes([got[4], got[5]]);
            if kind == libc::NLMSG_ERROR as u16 {
                let code = word(NLMSG_HDRLEN).map_or(0, |c| c as i32);
                return Err(if code < 0 {
                    io::Error::from_raw_os_error(-code)
                } else {
                    io::Error::from(io::ErrorKind::InvalidData)
                });
            }
            let start = NLMSG_HDRLEN + GENL_HDRLEN;
            if len < start {
                return Err(io::Error::from(io::ErrorKind::InvalidData));
            }
            return Ok(&self.buf[start..len]);
        }
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The netlink attributes in `data`: (type, value). Stops at the first malformed one.
fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes(data.get(..2)?.try_into().ok()?));
        let kind = u16::from_ne_bytes(data.get(2..4)?.try_into().ok()?) & NLA_TYPE_MASK;
        let value = data.get(NLA_HDRLEN..len)?;
        data = data.get(align4(len)..).unwrap_or(&[]);
        Some((kind, value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_walked_by_their_aligned_lengths_and_a_short_one_ends_the_walk() {
        // (len 6, type 1, "ab" + 2 pad), (len 8, type 0x8002 nested flag, u32 7), (len 9 > rest).
        let mut data = vec![6, 0, 1, 0, b'a', b'b', 0, 0, 8, 0, 2, 0x80];
        data.extend_from_slice(&7u32.to_ne_bytes());
        data.extend_from_slice(&[9, 0, 3, 0, 1]);
        let got: Vec<(u16, Vec<u8>)> = attrs(&data).map(|(t, v)| (t, v.to_vec())).collect();
        assert_eq!(got, vec![(1, b"ab".to_vec()), (2, 7u32.to_ne_bytes().to_vec())]);
        assert_eq!(
            attrs(&[2, 0, 1, 0]).count(),
            0,
            "a length below the header ends the walk"
        );
    }
}
