//! `BPF_PROG_QUERY` for tcx, returning program ids only.
//!
//! aya's `SchedClassifier::query_tcx` also opens every listed program by id
//! (`BPF_PROG_GET_FD_BY_ID`), which needs CAP_SYS_ADMIN; the gateway runs with CAP_BPF and
//! CAP_NET_ADMIN only (packaging/gateway.service), and the query itself needs no more than
//! CAP_NET_ADMIN.

use std::io;

use aya::programs::TcAttachType;

const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

/// The `query` member of `union bpf_attr` (uapi/linux/bpf.h), passed with its own size.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_ifindex: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}
const _: () = assert!(std::mem::size_of::<QueryAttr>() == 64);

/// The ids of the programs attached to `ifindex` at the tcx hook `attach_type`, in order.
pub fn tcx_prog_ids(ifindex: u32, attach_type: TcAttachType) -> io::Result<Vec<u32>> {
    let attach_type = match attach_type {
        TcAttachType::Ingress => BPF_TCX_INGRESS,
        TcAttachType::Egress => BPF_TCX_EGRESS,
        TcAttachType::Custom(_) => return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a tcx hook")),
    };
    let mut ids = vec![0u32; 64];
    loop {
        let mut attr = QueryAttr {
            target_ifindex: ifindex,
            attach_type,
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: u32::try_from(ids.len()).unwrap_or(u32::MAX),
            ..Default::default()
        };
        // SAFETY: `attr` is a valid, fully initialised bpf_attr prefix of the size passed; the
        // kernel writes at most `prog_cnt` ids into `ids`, which outlives the call.
        let rc = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_PROG_QUERY, &mut attr as *mut QueryAttr, std::mem::size_of::<QueryAttr>())
        };
        let count = attr.prog_cnt as usize;
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOSPC) && count > ids.len() {
                ids.resize(count, 0);
                continue;
            }
            return Err(e);
        }
        ids.truncate(count.min(ids.len()));
        return Ok(ids);
    }
}
