//! What one layer may cost on disk: a cap on the bytes it unpacks to, and a
//! free-space reserve on the filesystem of the store. A gzip bomb (a small
//! blob that inflates to many GB) is stopped by either long before the disk
//! is full.
//!
//! Both are measured on the uncompressed layer stream as it is read, before
//! the tar reader sees it: headers, file data, padding and whatever follows
//! the end-of-archive marker (which is hashed, so it costs time even though
//! it is never written). The limit is per layer, not per image: layers are
//! unpacked in parallel and shared between images, and the free-space
//! reserve, checked every [`FREE_SPACE_CHECK_EVERY`] bytes, bounds what all
//! pulls at once can take.

use std::fmt;
use std::io::{self, Read};
use std::os::fd::OwnedFd;

/// How often (in uncompressed bytes) the free space is looked at again.
pub const FREE_SPACE_CHECK_EVERY: u64 = 4 << 20;

/// The share of the store filesystem's inodes (percent) an unpack leaves
/// free: a layer of millions of empty files costs 512 bytes of tar each,
/// far under any byte limit, and would take the node's inodes (kubelet's
/// and journald's too) long before its bytes.
pub const MIN_FREE_INODES_PERCENT: u64 = 5;

/// The free space an unpack must leave on the store's filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeSpace {
    /// Bytes available to unprivileged users (`f_bavail`); 0 turns the check off.
    Bytes(u64),
    /// Percent (0-100) of the filesystem's size.
    Percent(u8),
}

impl fmt::Display for FreeSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FreeSpace::Bytes(b) => write!(f, "{}", bytesize::ByteSize(*b)),
            FreeSpace::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// The caps on one layer's unpack (`[registry] max_unpacked_layer_size`,
/// `min_free_space`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Uncompressed bytes one layer may have.
    pub max_layer_bytes: u64,
    pub min_free: FreeSpace,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self {
            max_layer_bytes: 64 << 30,
            min_free: FreeSpace::Bytes(1 << 30),
        }
    }
}

/// Which cap a layer ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitExceeded {
    /// The layer unpacks to more than `limit` bytes.
    LayerSize { limit: u64 },
    /// Unpacking would leave less than `reserve` (`min_free`) free.
    FreeSpace {
        available: u64,
        reserve: u64,
        min_free: FreeSpace,
    },
    /// Unpacking would leave fewer than `reserve` inodes free.
    FreeInodes { available: u64, reserve: u64 },
}

impl fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitExceeded::LayerSize { limit } => write!(
                f,
                "unpacks to more than {} ({limit} bytes), the limit set by registry.max_unpacked_layer_size",
                bytesize::ByteSize(*limit)
            ),
            LimitExceeded::FreeSpace {
                available,
                reserve,
                min_free,
            } => write!(
                f,
                "unpacking stopped with {} free on the image store's filesystem, under the reserve of {} \
                 (registry.min_free_space = \"{min_free}\")",
                bytesize::ByteSize(*available),
                bytesize::ByteSize(*reserve),
            ),
            LimitExceeded::FreeInodes { available, reserve } => write!(
                f,
                "unpacking stopped with {available} inodes free on the image store's filesystem, \
                 under the reserve of {reserve} ({MIN_FREE_INODES_PERCENT}% of its inodes): the layer \
                 holds too many files"
            ),
        }
    }
}

/// The inodes short of the reserve, if any: (available, reserve). A
/// filesystem that counts no inodes (btrfs reports 0) has no reserve.
pub fn inodes_short(available: u64, total: u64) -> Option<(u64, u64)> {
    let reserve = total / 100 * MIN_FREE_INODES_PERCENT;
    (total > 0 && available < reserve).then_some((available, reserve))
}

impl std::error::Error for LimitExceeded {}

/// The store filesystem's free space check: an fd on it and the bytes to keep.
struct FreeCheck {
    fd: OwnedFd,
    reserve: u64,
    min_free: FreeSpace,
}

/// A reader that counts the bytes passing through and fails once a layer is
/// over a limit. After a failure it fails every read; [`Self::exceeded`]
/// says which limit it was, so that the caller can tell it from a broken
/// stream.
pub struct LimitedReader<R> {
    inner: R,
    read: u64,
    max: u64,
    free: Option<FreeCheck>,
    next_check: u64,
    exceeded: Option<LimitExceeded>,
}

impl<R: Read> LimitedReader<R> {
    /// `store_fs` is any open file or directory on the filesystem that the
    /// layer is unpacked to. The reserve of a percentage is computed here,
    /// once.
    pub fn new(inner: R, limits: &UnpackLimits, store_fs: OwnedFd) -> io::Result<Self> {
        let reserve = match limits.min_free {
            FreeSpace::Bytes(b) => b,
            FreeSpace::Percent(p) => {
                let st = rustix::fs::fstatvfs(&store_fs)?;
                let size = u128::from(st.f_blocks) * u128::from(st.f_frsize);
                u64::try_from(size * u128::from(p.min(100)) / 100).unwrap_or(u64::MAX)
            }
        };
        Ok(Self {
            inner,
            read: 0,
            max: limits.max_layer_bytes,
            free: Some(FreeCheck {
                fd: store_fs,
                reserve,
                min_free: limits.min_free,
            }),
            next_check: 0,
            exceeded: None,
        })
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Uncompressed bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// The limit that stopped the stream, if one did.
    pub fn exceeded(&self) -> Option<LimitExceeded> {
        self.exceeded
    }

    fn fail(&mut self, e: LimitExceeded) -> io::Error {
        self.exceeded = Some(e);
        io::Error::other(e)
    }

    fn check_free_space(&mut self) -> io::Result<()> {
        let Some(c) = &self.free else {
            return Ok(());
        };
        let st = rustix::fs::fstatvfs(&c.fd)?;
        if let Some((available, reserve)) = inodes_short(st.f_favail, st.f_files) {
            return Err(self.fail(LimitExceeded::FreeInodes { available, reserve }));
        }
        let available = st.f_bavail.saturating_mul(st.f_frsize);
        if c.reserve > 0 && available < c.reserve {
            let e = LimitExceeded::FreeSpace {
                available,
                reserve: c.reserve,
                min_free: c.min_free,
            };
            return Err(self.fail(e));
        }
        Ok(())
    }
}

impl<R: Read> Read for LimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = self.exceeded {
            return Err(io::Error::other(e));
        }
        if self.read >= self.next_check {
            self.check_free_space()?;
            self.next_check = self.read.saturating_add(FREE_SPACE_CHECK_EVERY);
        }
        // Never hand out more than the limit allows, plus one byte to see
        // that the stream goes on past it.
        let room = self.max.saturating_sub(self.read).saturating_add(1);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.read += n as u64;
        if self.read > self.max {
            let e = LimitExceeded::LayerSize { limit: self.max };
            return Err(self.fail(e));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs_fd() -> OwnedFd {
        std::fs::File::open(std::env::temp_dir()).unwrap().into()
    }

    fn limits(max: u64, min_free: FreeSpace) -> UnpackLimits {
        UnpackLimits {
            max_layer_bytes: max,
            min_free,
        }
    }

    #[test]
    fn a_stream_up_to_the_limit_passes_and_one_byte_more_fails() {
        let data = vec![7u8; 10_000];
        let mut r =
            LimitedReader::new(&data[..], &limits(10_000, FreeSpace::Bytes(0)), fs_fd()).unwrap();
        assert_eq!(io::copy(&mut r, &mut io::sink()).unwrap(), 10_000);
        assert_eq!(r.exceeded(), None);

        let mut r =
            LimitedReader::new(&data[..], &limits(9_999, FreeSpace::Bytes(0)), fs_fd()).unwrap();
        let e = io::copy(&mut r, &mut io::sink()).unwrap_err();
        assert_eq!(
            r.exceeded(),
            Some(LimitExceeded::LayerSize { limit: 9_999 })
        );
        assert!(
            e.to_string().contains("registry.max_unpacked_layer_size"),
            "{e}"
        );
        assert_eq!(
            r.bytes_read(),
            10_000,
            "read at most one byte past the limit"
        );
        // It stays failed.
        assert!(r.read(&mut [0u8; 16]).is_err());
    }

    #[test]
    fn a_reserve_larger_than_the_disk_stops_the_first_read() {
        for min_free in [FreeSpace::Bytes(u64::MAX), FreeSpace::Percent(100)] {
            let data = [1u8; 100];
            let mut r =
                LimitedReader::new(&data[..], &limits(u64::MAX, min_free), fs_fd()).unwrap();
            let e = r.read(&mut [0u8; 10]).unwrap_err();
            let Some(LimitExceeded::FreeSpace {
                available, reserve, ..
            }) = r.exceeded()
            else {
                panic!("{min_free:?}: {e}");
            };
            assert!(available < reserve, "{min_free:?}");
            let msg = r.exceeded().unwrap().to_string();
            assert!(msg.contains("registry.min_free_space"), "{msg}");
        }
    }

    #[test]
    fn a_small_reserve_lets_the_stream_through() {
        let data = vec![1u8; (FREE_SPACE_CHECK_EVERY * 2 + 5) as usize];
        for min_free in [FreeSpace::Bytes(1), FreeSpace::Percent(0)] {
            let mut r =
                LimitedReader::new(&data[..], &limits(u64::MAX, min_free), fs_fd()).unwrap();
            assert_eq!(
                io::copy(&mut r, &mut io::sink()).unwrap(),
                data.len() as u64
            );
        }
    }

    #[test]
    fn an_inode_reserve_of_five_percent_is_kept_where_inodes_are_counted() {
        assert_eq!(inodes_short(4_000, 100_000), Some((4_000, 5_000)));
        assert_eq!(inodes_short(5_000, 100_000), None);
        assert_eq!(inodes_short(0, 0), None, "btrfs counts no inodes");
        let e = LimitExceeded::FreeInodes {
            available: 4,
            reserve: 5,
        }
        .to_string();
        assert!(e.contains("too many files") && e.contains("5%"), "{e}");
    }
}
