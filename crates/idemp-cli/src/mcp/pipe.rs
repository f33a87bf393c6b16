//! The process's own stdin and stdout as non-blocking pipes on the runtime's event
//! loop, when they are pipes or sockets (as they are under an agent).
//!
//! `tokio::io::stdin()` and `stdout()` do every read and write on the blocking
//! thread pool: two thread hand-offs per message and direction, which on a loaded
//! machine is most of the relay's latency. A pipe can instead be put in
//! non-blocking mode and polled like a socket. That mode belongs to the open file
//! description, which other processes may share, so it is only used when that is
//! safe: stdin and stdout must be pipes or sockets, and stdout must not be the same
//! pipe as stderr (which the server inherits and writes with blocking calls). The
//! original flags are restored on drop. Anything else falls back to tokio's own
//! stdin and stdout.

use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// A non-blocking pipe end (see the [module docs](self)).
#[derive(Debug)]
pub struct Pipe {
    fd: AsyncFd<RawFd>,
    flags: libc::c_int,
}

fn stat(fd: RawFd) -> Option<libc::stat> {
    // SAFETY: fstat writes into a zeroed, properly sized stat buffer; the fd is one
    // of the process's standard descriptors and is only inspected.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        (libc::fstat(fd, &mut st) == 0).then_some(st)
    }
}

fn is_pipe_or_socket(st: &libc::stat) -> bool {
    let kind = st.st_mode & libc::S_IFMT;
    kind == libc::S_IFIFO || kind == libc::S_IFSOCK
}

impl Pipe {
    fn new(fd: RawFd, interest: Interest) -> Option<Self> {
        // SAFETY: fcntl on a valid descriptor with F_GETFL/F_SETFL changes only its
        // status flags.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return None;
        }
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return None;
        }
        // SAFETY: fd 0 and fd 1 stay open, referring to the same description, for the
        // life of the process: the proxy never closes or replaces them.
        match unsafe { AsyncFd::register_with_interest(fd, interest) } {
            Ok(fd) => Some(Self { fd, flags }),
            Err(_) => {
                unsafe { libc::fcntl(fd, libc::F_SETFL, flags) };
                None
            }
        }
    }

    /// The process's stdin and stdout as pipes, when that is safe.
    pub fn stdio() -> Option<(Pipe, Pipe)> {
        let (i, o, e) = (stat(0)?, stat(1)?, stat(2));
        if !is_pipe_or_socket(&i) || !is_pipe_or_socket(&o) {
            return None;
        }
        if e.is_some_and(|e| e.st_dev == o.st_dev && e.st_ino == o.st_ino) {
            return None;
        }
        let input = Pipe::new(0, Interest::READABLE)?;
        let output = Pipe::new(1, Interest::WRITABLE)?;
        Some((input, output))
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        // SAFETY: restores the flags read in `new` on the same descriptor.
        unsafe { libc::fcntl(*self.fd.get_ref(), libc::F_SETFL, self.flags) };
    }
}

impl AsyncRead for Pipe {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let res = guard.try_io(|fd| {
                // SAFETY: reads at most `unfilled.len()` bytes into initialized memory.
                let n = unsafe {
                    libc::read(*fd.get_ref(), unfilled.as_mut_ptr().cast(), unfilled.len())
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match res {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Pipe {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            let res = guard.try_io(|fd| {
                // SAFETY: writes at most `data.len()` bytes from a valid slice.
                let n = unsafe { libc::write(*fd.get_ref(), data.as_ptr().cast(), data.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match res {
                Ok(Ok(n)) => return Poll::Ready(Ok(n)),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
