//! A packet socket's receive ring (`PACKET_RX_RING`, `TPACKET_V2`): the
//! kernel writes each frame the socket's filter accepts into memory shared
//! with us, so reading the frames queued is a look at that memory, not a
//! system call. The echo streams read their sockets on every tick one of
//! their echoes is outstanding: with a ring, a tick that finds nothing
//! costs no `recvmmsg` either (see [`super::echo_stream`]).
//!
//! Layout (Documentation/networking/packet_mmap.rst): `BLOCKS` blocks of
//! one page, each holding `page / FRAME_SIZE` frames; a frame is a
//! `tpacket2_hdr`, the `sockaddr_ll` of the frame, then the frame itself
//! at `tp_mac`. A frame whose status has `TP_STATUS_USER` is ours until we
//! hand it back with `TP_STATUS_KERNEL`; frames are filled in order, so
//! reading stops at the first frame still the kernel's.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{fence, Ordering};

/// Bytes per frame slot: the header, the address and an echo or a
/// redirect quoting one (frames longer than the slot are cut).
const FRAME_SIZE: usize = 512;
/// Pages in the ring: 32 frames (a tick's echoes are a handful).
const BLOCKS: usize = 4;
const PAGE: usize = 4096;

pub(super) struct RxRing {
    map: *mut u8,
    len: usize,
    frames: usize,
    next: usize,
}

// SAFETY: the mapping is owned by this value alone (no aliasing copy of
// the pointer is kept), and the kernel's side is synchronised through the
// frames' status words.
unsafe impl Send for RxRing {}

impl RxRing {
    /// Give `fd` (a packet socket) a receive ring and map it. Frames the
    /// socket queued before stay on its ordinary queue.
    pub(super) fn attach(fd: &OwnedFd) -> io::Result<RxRing> {
        let raw = fd.as_raw_fd();
        let set = |opt: libc::c_int, val: *const libc::c_void, len: usize| {
            // SAFETY: valid fd; `val` points at `len` live bytes.
            let rc = unsafe {
                libc::setsockopt(raw, libc::SOL_PACKET, opt, val, len as libc::socklen_t)
            };
            if rc < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        let version = libc::tpacket_versions::TPACKET_V2 as libc::c_int;
        set(
            libc::PACKET_VERSION,
            (&version as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>(),
        )?;
        let req = libc::tpacket_req {
            tp_block_size: PAGE as u32,
            tp_block_nr: BLOCKS as u32,
            tp_frame_size: FRAME_SIZE as u32,
            tp_frame_nr: (BLOCKS * PAGE / FRAME_SIZE) as u32,
        };
        set(
            libc::PACKET_RX_RING,
            (&req as *const libc::tpacket_req).cast(),
            std::mem::size_of::<libc::tpacket_req>(),
        )?;
        let len = BLOCKS * PAGE;
        // SAFETY: mapping the ring just set up on this socket.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                raw,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(RxRing {
            map: map.cast(),
            len,
            frames: BLOCKS * PAGE / FRAME_SIZE,
            next: 0,
        })
    }

    /// Hand each frame the kernel filled to `f` (its bytes, as far as the
    /// slot holds them, and its packet type), oldest first, at most `max`.
    pub(super) fn drain(&mut self, max: usize, mut f: impl FnMut(&[u8], u8)) {
        for _ in 0..max {
            // SAFETY: `next < frames`: the slot lies inside the mapping,
            // aligned for the header (FRAME_SIZE is a multiple of 16).
            let slot = unsafe { self.map.add(self.next * FRAME_SIZE) };
            let hdr = slot.cast::<libc::tpacket2_hdr>();
            // SAFETY: the kernel writes the status concurrently: a
            // volatile read, then an acquire fence before the frame.
            let status = unsafe { std::ptr::addr_of!((*hdr).tp_status).read_volatile() };
            if status & libc::TP_STATUS_USER == 0 {
                break;
            }
            fence(Ordering::Acquire);
            // SAFETY: the frame is ours until handed back below; its
            // offsets are the kernel's, bounded by the slot here.
            unsafe {
                let mac = usize::from((*hdr).tp_mac).min(FRAME_SIZE);
                let len = ((*hdr).tp_snaplen as usize).min(FRAME_SIZE - mac);
                let sll = slot
                    .add(libc::TPACKET_ALIGN(
                        std::mem::size_of::<libc::tpacket2_hdr>(),
                    ))
                    .cast::<libc::sockaddr_ll>();
                let pkttype = (*sll).sll_pkttype;
                f(std::slice::from_raw_parts(slot.add(mac), len), pkttype);
            }
            fence(Ordering::Release);
            // SAFETY: as above; the kernel may refill the slot after this.
            unsafe {
                std::ptr::addr_of_mut!((*hdr).tp_status).write_volatile(libc::TP_STATUS_KERNEL)
            };
            self.next = (self.next + 1) % self.frames;
        }
    }
}

impl Drop for RxRing {
    fn drop(&mut self) {
        // SAFETY: our own mapping, of this length.
        unsafe { libc::munmap(self.map.cast(), self.len) };
    }
}
