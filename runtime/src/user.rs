//! The user a container's process runs as, resolved the way containerd does
//! (`WithUser`, `WithAdditionalGIDs` in its `pkg/oci/spec_opts.go`):
//!
//! * The CRI's `run_as_username` or `run_as_user` (plus `run_as_group`)
//!   wins; else the image config's `User`; else root.
//! * A user string is `uid`, `name`, `uid:gid`, `name:gid`, `uid:group` or
//!   `name:group`. Names resolve through the image's `/etc/passwd` and
//!   `/etc/group`; a numeric uid without a passwd entry is fine (gid 0); an
//!   unknown name is an error that names it.
//! * Additional gids: the primary gid, the groups of `/etc/group` that list
//!   the user (policy Merge), and the CRI's `supplemental_groups`; sorted,
//!   without repeats.
//!
//! The image's root filesystem is untrusted: its files are opened with
//! `openat2(RESOLVE_IN_ROOT)` relative to the rootfs, so a symlinked
//! `/etc/passwd` resolves inside the image and never reaches the node's; a
//! FIFO or device there cannot block or feed us, and at most 1 MiB is read.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::model::{ContainerSecurityContext, SupplementalGroupsPolicy};

/// Largest /etc/passwd or /etc/group berth reads from an image.
pub const MAX_USER_FILE: u64 = 1 << 20;

/// Largest uid or gid (runc's limit).
const MAX_ID: u64 = i32::MAX as u64;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("user {0:?} is not in the image's /etc/passwd")]
    UnknownUser(String),
    #[error("group {0:?} is not in the image's /etc/group")]
    UnknownGroup(String),
    #[error("invalid user {user:?}: {reason}")]
    Invalid { user: String, reason: String },
    #[error("opening the container's root filesystem {}: {source}", path.display())]
    Rootfs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the image's {file}: {source}")]
    Read {
        file: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the image's {file} is not a regular file")]
    NotRegular { file: &'static str },
    #[error("the image's {file} is larger than {MAX_USER_FILE} bytes")]
    TooLarge { file: &'static str },
}

/// The process's credentials, as the OCI spec's `process.user` takes them
/// (and ContainerStatus reports them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Sorted, without repeats; holds `gid`.
    pub additional_gids: Vec<u32>,
}

/// One line of /etc/passwd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// One line of /etc/group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// The user string the CRI asks for, as containerd's `GenerateUserString`
/// makes it: `name` or `uid`, with `:gid` when `run_as_group` is set. None:
/// the CRI does not say (the image's `User` applies).
pub fn cri_user_string(sc: &ContainerSecurityContext) -> Result<Option<String>, UserError> {
    let user = if !sc.run_as_username.is_empty() {
        Some(sc.run_as_username.clone())
    } else {
        sc.run_as_user.map(|u| u.to_string())
    };
    match (user, sc.run_as_group) {
        (None, None) => Ok(None),
        (None, Some(g)) => Err(UserError::Invalid {
            user: format!(":{g}"),
            reason: "run_as_group is set without run_as_user or run_as_username".into(),
        }),
        (Some(u), None) => Ok(Some(u)),
        (Some(u), Some(g)) => Ok(Some(format!("{u}:{g}"))),
    }
}

/// Resolve the container process's user in the image at `rootfs` (mounted),
/// from the CRI security context and the image config's `User`.
pub fn resolve(
    rootfs: &Path,
    image_user: Option<&str>,
    sc: &ContainerSecurityContext,
) -> Result<ResolvedUser, UserError> {
    let mut db = UserDb::open(rootfs)?;
    resolve_in(&mut db, image_user, sc)
}

/// [`resolve`] on an opened image (testable with any [`UserDb`]).
pub fn resolve_in(
    db: &mut UserDb,
    image_user: Option<&str>,
    sc: &ContainerSecurityContext,
) -> Result<ResolvedUser, UserError> {
    let image_user = image_user.filter(|u| !u.is_empty());
    let user = cri_user_string(sc)?.or_else(|| image_user.map(str::to_string));
    let (uid, gid) = match &user {
        None => (0, 0),
        Some(u) => uid_gid(db, u)?,
    };

    let mut gids = BTreeSet::from([gid]);
    if sc.supplemental_groups_policy == SupplementalGroupsPolicy::Merge {
        // containerd looks the groups up by the user part alone.
        let who = if !sc.run_as_username.is_empty() {
            sc.run_as_username.clone()
        } else if let Some(u) = sc.run_as_user {
            u.to_string()
        } else if let Some(u) = image_user {
            u.split(':').next().unwrap_or("").to_string()
        } else {
            "0".to_string()
        };
        let name = match parse_id(&who) {
            Some(id) => db
                .passwd()?
                .iter()
                .find(|e| u64::from(e.uid) == id)
                .map(|e| e.name.clone()),
            None => Some(who),
        };
        if let Some(name) = name {
            for g in db.group()? {
                // Only supplementary groups: not the user's own group.
                if g.name != name && g.members.contains(&name) {
                    gids.insert(g.gid);
                }
            }
        }
    }
    for g in &sc.supplemental_groups {
        let g = u32::try_from(*g).map_err(|_| UserError::Invalid {
            user: user.clone().unwrap_or_default(),
            reason: format!("supplemental group {g} is out of range"),
        })?;
        gids.insert(g);
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids: gids.into_iter().collect(),
    })
}

/// uid and gid of a user string, looked up in the image as needed.
fn uid_gid(db: &mut UserDb, user: &str) -> Result<(u32, u32), UserError> {
    let bad = |reason: &str| UserError::Invalid {
        user: user.to_string(),
        reason: reason.to_string(),
    };
    let parts: Vec<&str> = user.split(':').collect();
    match parts.as_slice() {
        [u] => {
            if u.is_empty() {
                return Err(bad("empty user"));
            }
            match id_or_name(u).map_err(|r| bad(&format!("uid {r}")))? {
                Id::Num(uid) => {
                    // A uid without a passwd entry is fine: group 0.
                    let gid = db
                        .passwd()?
                        .iter()
                        .find(|e| e.uid == uid)
                        .map_or(0, |e| e.gid);
                    Ok((uid, gid))
                }
                Id::Name(name) => {
                    let e = db.user_by_name(name)?;
                    Ok((e.uid, e.gid))
                }
            }
        }
        [u, g] => {
            if u.is_empty() || g.is_empty() {
                return Err(bad("expected user:group"));
            }
            let uid = match id_or_name(u).map_err(|r| bad(&format!("uid {r}")))? {
                Id::Num(uid) => uid,
                Id::Name(name) => db.user_by_name(name)?.uid,
            };
            let gid = match id_or_name(g).map_err(|r| bad(&format!("gid {r}")))? {
                Id::Num(gid) => gid,
                Id::Name(name) => db.group_by_name(name)?.gid,
            };
            Ok((uid, gid))
        }
        _ => Err(bad("expected user, uid, user:group or uid:gid")),
    }
}

enum Id<'a> {
    Num(u32),
    Name(&'a str),
}

/// A number (which must be in range) or a name.
fn id_or_name(s: &str) -> Result<Id<'_>, &'static str> {
    if s.strip_prefix('-')
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
    {
        return Err("is out of range");
    }
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) {
        return match parse_id(s) {
            Some(v) => u32::try_from(v).map(Id::Num).map_err(|_| "is out of range"),
            None => Err("is out of range"),
        };
    }
    Ok(Id::Name(s))
}

/// A decimal id within 0..=i32::MAX.
fn parse_id(s: &str) -> Option<u64> {
    if s.is_empty() || !s.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse::<u64>().ok().filter(|v| *v <= MAX_ID)
}

/// An image's user and group databases, read on first use.
pub struct UserDb {
    source: Source,
    passwd: Option<Vec<PasswdEntry>>,
    group: Option<Vec<GroupEntry>>,
}

enum Source {
    Rootfs(OwnedFd),
    Text { passwd: String, group: String },
}

impl UserDb {
    /// The databases of the image mounted at `rootfs`.
    pub fn open(rootfs: &Path) -> Result<Self, UserError> {
        let fd = rustix::fs::open(
            rootfs,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| UserError::Rootfs {
            path: rootfs.to_path_buf(),
            source: e.into(),
        })?;
        Ok(Self {
            source: Source::Rootfs(fd),
            passwd: None,
            group: None,
        })
    }

    /// Databases given as text (an absent file is an empty string).
    pub fn from_text(passwd: &str, group: &str) -> Self {
        Self {
            source: Source::Text {
                passwd: passwd.to_string(),
                group: group.to_string(),
            },
            passwd: None,
            group: None,
        }
    }

    /// /etc/passwd's entries (none if the image has no /etc/passwd).
    pub fn passwd(&mut self) -> Result<&[PasswdEntry], UserError> {
        if self.passwd.is_none() {
            let text = match &self.source {
                Source::Rootfs(fd) => read_in_root(fd, "etc/passwd", "/etc/passwd")?,
                Source::Text { passwd, .. } => Some(passwd.clone()),
            };
            self.passwd = Some(text.as_deref().map(parse_passwd).unwrap_or_default());
        }
        Ok(self.passwd.as_deref().unwrap_or_default())
    }

    /// /etc/group's entries (none if the image has no /etc/group).
    pub fn group(&mut self) -> Result<&[GroupEntry], UserError> {
        if self.group.is_none() {
            let text = match &self.source {
                Source::Rootfs(fd) => read_in_root(fd, "etc/group", "/etc/group")?,
                Source::Text { group, .. } => Some(group.clone()),
            };
            self.group = Some(text.as_deref().map(parse_group).unwrap_or_default());
        }
        Ok(self.group.as_deref().unwrap_or_default())
    }

    fn user_by_name(&mut self, name: &str) -> Result<PasswdEntry, UserError> {
        self.passwd()?
            .iter()
            .find(|e| e.name == name)
            .cloned()
            .ok_or_else(|| UserError::UnknownUser(name.to_string()))
    }

    fn group_by_name(&mut self, name: &str) -> Result<GroupEntry, UserError> {
        self.group()?
            .iter()
            .find(|e| e.name == name)
            .cloned()
            .ok_or_else(|| UserError::UnknownGroup(name.to_string()))
    }
}

/// Read `rel` below the root `fd`, resolving every symlink inside the root.
/// None when it does not exist.
fn read_in_root(
    root: &OwnedFd,
    rel: &str,
    file: &'static str,
) -> Result<Option<String>, UserError> {
    let read_err = |e: std::io::Error| UserError::Read { file, source: e };
    // NONBLOCK: opening a FIFO must not wait for a writer.
    let fd = match rustix::fs::openat2(
        root,
        rel,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::NOTDIR) => return Ok(None),
        Err(e) => return Err(read_err(e.into())),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| read_err(e.into()))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(UserError::NotRegular { file });
    }
    let mut buf = Vec::new();
    File::from(fd)
        .take(MAX_USER_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(read_err)?;
    if buf.len() as u64 > MAX_USER_FILE {
        return Err(UserError::TooLarge { file });
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// Lines we cannot read (bad numbers, NIS `+`/`-` entries, comments) are
/// skipped rather than read as uid 0.
fn entries(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty() && !l.starts_with(['#', '+', '-']))
        .map(|l| l.split(':').collect())
}

pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    entries(text)
        .filter_map(|f| {
            let (name, uid, gid) = (f.first()?, f.get(2)?, f.get(3)?);
            Some(PasswdEntry {
                name: name.to_string(),
                uid: uid.trim().parse().ok()?,
                gid: gid.trim().parse().ok()?,
            })
        })
        .collect()
}

pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    entries(text)
        .filter_map(|f| {
            let (name, gid) = (f.first()?, f.get(2)?);
            let members = f
                .get(3)
                .map(|m| {
                    m.split(',')
                        .map(str::trim)
                        .filter(|m| !m.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            Some(GroupEntry {
                name: name.to_string(),
                gid: gid.trim().parse().ok()?,
                members,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
# a comment
nginx:x:101:101:nginx:/var/cache/nginx:/sbin/nologin
app:x:1000:1000::/home/app:/bin/sh
broken:x:notanumber:1::/:/bin/sh
";
    const GROUP: &str = "\
root:x:0:root
daemon:x:1:
nginx:x:101:
app:x:1000:app
audio:x:29:app,nginx
video:x:44: app
wheel:x:10:root
";

    fn db() -> UserDb {
        UserDb::from_text(PASSWD, GROUP)
    }

    fn sc() -> ContainerSecurityContext {
        ContainerSecurityContext::default()
    }

    fn user(uid: u32, gid: u32, gids: &[u32]) -> ResolvedUser {
        ResolvedUser {
            uid,
            gid,
            additional_gids: gids.to_vec(),
        }
    }

    #[test]
    fn no_user_anywhere_is_root_with_roots_groups() {
        let u = resolve_in(&mut db(), None, &sc()).unwrap();
        assert_eq!(u, user(0, 0, &[0, 10]));
    }

    #[test]
    fn image_user_name_resolves_through_passwd_and_group() {
        let u = resolve_in(&mut db(), Some("nginx"), &sc()).unwrap();
        assert_eq!(u, user(101, 101, &[29, 101]));
    }

    #[test]
    fn numeric_uid_without_passwd_entry_gets_group_zero() {
        let u = resolve_in(&mut db(), Some("4242"), &sc()).unwrap();
        assert_eq!(u, user(4242, 0, &[0]));
        let mut empty = UserDb::from_text("", "");
        assert_eq!(
            resolve_in(&mut empty, Some("4242"), &sc()).unwrap(),
            user(4242, 0, &[0])
        );
    }

    #[test]
    fn numeric_uid_with_passwd_entry_gets_its_group() {
        let u = resolve_in(&mut db(), Some("1000"), &sc()).unwrap();
        assert_eq!(u, user(1000, 1000, &[29, 44, 1000]));
    }

    #[test]
    fn uid_gid_pair_needs_no_lookup() {
        let mut nothing = UserDb::from_text("", "");
        let u = resolve_in(&mut nothing, Some("5:6"), &sc()).unwrap();
        assert_eq!(u, user(5, 6, &[6]));
    }

    #[test]
    fn name_and_group_forms_mix() {
        assert_eq!(
            resolve_in(&mut db(), Some("app:audio"), &sc()).unwrap(),
            user(1000, 29, &[29, 44])
        );
        assert_eq!(
            resolve_in(&mut db(), Some("app:7"), &sc()).unwrap(),
            user(1000, 7, &[7, 29, 44])
        );
        assert_eq!(
            resolve_in(&mut db(), Some("101:video"), &sc()).unwrap(),
            user(101, 44, &[29, 44])
        );
    }

    #[test]
    fn unknown_user_name_is_an_error() {
        let e = resolve_in(&mut db(), Some("postgres"), &sc()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "user \"postgres\" is not in the image's /etc/passwd"
        );
        let e = resolve_in(&mut db(), Some("app:nogroup"), &sc()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "group \"nogroup\" is not in the image's /etc/group"
        );
    }

    #[test]
    fn malformed_passwd_lines_are_never_root() {
        let e = resolve_in(&mut db(), Some("broken"), &sc()).unwrap_err();
        assert!(matches!(e, UserError::UnknownUser(_)), "{e}");
    }

    #[test]
    fn cri_run_as_user_overrides_image_user() {
        let mut s = sc();
        s.run_as_user = Some(1000);
        assert_eq!(
            resolve_in(&mut db(), Some("nginx"), &s).unwrap(),
            user(1000, 1000, &[29, 44, 1000])
        );
    }

    #[test]
    fn cri_run_as_username_wins_over_run_as_user() {
        let mut s = sc();
        s.run_as_user = Some(1000);
        s.run_as_username = "nginx".into();
        assert_eq!(
            resolve_in(&mut db(), None, &s).unwrap(),
            user(101, 101, &[29, 101])
        );
    }

    #[test]
    fn cri_run_as_group_sets_the_primary_group() {
        let mut s = sc();
        s.run_as_user = Some(1000);
        s.run_as_group = Some(3000);
        assert_eq!(
            resolve_in(&mut db(), Some("nginx"), &s).unwrap(),
            user(1000, 3000, &[29, 44, 3000])
        );
    }

    #[test]
    fn run_as_group_alone_is_an_error() {
        let mut s = sc();
        s.run_as_group = Some(3000);
        let e = resolve_in(&mut db(), Some("nginx"), &s).unwrap_err();
        assert!(e.to_string().contains("without run_as_user"), "{e}");
    }

    #[test]
    fn supplemental_groups_merge_with_the_images() {
        let mut s = sc();
        s.supplemental_groups = vec![2000, 29, 2000];
        assert_eq!(
            resolve_in(&mut db(), Some("nginx"), &s).unwrap(),
            user(101, 101, &[29, 101, 2000])
        );
    }

    #[test]
    fn strict_policy_ignores_the_images_groups() {
        let mut s = sc();
        s.supplemental_groups = vec![2000];
        s.supplemental_groups_policy = SupplementalGroupsPolicy::Strict;
        assert_eq!(
            resolve_in(&mut db(), Some("nginx"), &s).unwrap(),
            user(101, 101, &[101, 2000])
        );
    }

    #[test]
    fn out_of_range_or_malformed_user_strings_are_errors() {
        for bad in ["2147483648", "1:2:3", ":5", "5:", "-1"] {
            let e = resolve_in(&mut db(), Some(bad), &sc()).unwrap_err();
            assert!(matches!(e, UserError::Invalid { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn cri_user_string_is_built_like_containerd() {
        let mut s = sc();
        assert_eq!(cri_user_string(&s).unwrap(), None);
        s.run_as_user = Some(5);
        assert_eq!(cri_user_string(&s).unwrap().as_deref(), Some("5"));
        s.run_as_group = Some(6);
        assert_eq!(cri_user_string(&s).unwrap().as_deref(), Some("5:6"));
        s.run_as_username = "app".into();
        assert_eq!(cri_user_string(&s).unwrap().as_deref(), Some("app:6"));
    }

    fn image(passwd: &str, group: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        fs::write(dir.path().join("etc/passwd"), passwd).unwrap();
        fs::write(dir.path().join("etc/group"), group).unwrap();
        dir
    }

    #[test]
    fn user_resolves_from_a_real_rootfs() {
        let root = image(PASSWD, GROUP);
        let u = resolve(root.path(), Some("app"), &sc()).unwrap();
        assert_eq!(u, user(1000, 1000, &[29, 44, 1000]));
    }

    #[test]
    fn passwd_symlink_to_host_is_not_followed() {
        // The image's /etc/passwd points at an absolute path; it must resolve
        // inside the image, where that path holds the image's own file.
        let outside = tempfile::tempdir().unwrap();
        let host_passwd = outside.path().join("passwd");
        fs::write(&host_passwd, "hostonly:x:0:0::/:/bin/sh\n").unwrap();

        let root = image("", GROUP);
        fs::remove_file(root.path().join("etc/passwd")).unwrap();
        symlink(&host_passwd, root.path().join("etc/passwd")).unwrap();
        let e = resolve(root.path(), Some("hostonly"), &sc()).unwrap_err();
        assert!(matches!(e, UserError::UnknownUser(_)), "{e}");

        // The same link, resolved in the root, finds the image's copy.
        let inside = root.path().join(host_passwd.strip_prefix("/").unwrap());
        fs::create_dir_all(inside.parent().unwrap()).unwrap();
        fs::write(&inside, "imageuser:x:77:77::/:/bin/sh\n").unwrap();
        let u = resolve(root.path(), Some("imageuser"), &sc()).unwrap();
        assert_eq!((u.uid, u.gid), (77, 77));
    }

    #[test]
    fn dotdot_symlink_cannot_climb_out_of_the_rootfs() {
        let root = image("", "");
        fs::remove_file(root.path().join("etc/passwd")).unwrap();
        symlink(
            "../../../../../../etc/passwd",
            root.path().join("etc/passwd"),
        )
        .unwrap();
        // Clamped at the rootfs: ../../etc/passwd is the link itself again,
        // a loop, never the node's /etc/passwd (which has root).
        match resolve(root.path(), Some("root"), &sc()) {
            Err(UserError::Read { .. }) | Err(UserError::UnknownUser(_)) => {}
            other => panic!("escaped the rootfs: {other:?}"),
        }
    }

    #[test]
    fn missing_etc_files_mean_no_entries() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(
            resolve(root.path(), Some("1234"), &sc()).unwrap(),
            user(1234, 0, &[0])
        );
        let e = resolve(root.path(), Some("app"), &sc()).unwrap_err();
        assert!(matches!(e, UserError::UnknownUser(_)), "{e}");
    }

    #[test]
    fn fifo_passwd_does_not_block() {
        let root = image("", "");
        fs::remove_file(root.path().join("etc/passwd")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.path().join("etc/passwd"),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let e = resolve(root.path(), Some("app"), &sc()).unwrap_err();
        assert!(matches!(e, UserError::NotRegular { .. }), "{e}");
    }

    #[test]
    fn huge_passwd_is_refused() {
        let big = "x".repeat(MAX_USER_FILE as usize + 1);
        let root = image(&big, "");
        let e = resolve(root.path(), Some("app"), &sc()).unwrap_err();
        assert!(matches!(e, UserError::TooLarge { .. }), "{e}");
    }

    #[test]
    fn numeric_user_in_image_without_etc_needs_no_files() {
        // uid:gid never opens the files: a hostile /etc cannot even be seen.
        let root = image("", "");
        fs::remove_file(root.path().join("etc/passwd")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.path().join("etc/passwd"),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let mut s = sc();
        s.supplemental_groups_policy = SupplementalGroupsPolicy::Strict;
        assert_eq!(
            resolve(root.path(), Some("10:20"), &s).unwrap(),
            user(10, 20, &[20])
        );
    }
}
