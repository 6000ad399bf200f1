//! Reads of `task_struct` and `mm_struct` fields at offsets the agent
//! computed from the kernel's BTF (`maps::OFFSETS`).
use aya_ebpf::helpers::bpf_probe_read_kernel;

/// Read a `T` at `base + offset` in kernel memory.
#[inline(always)]
pub fn read<T>(base: u64, offset: u32) -> Result<T, i32> {
    if base == 0 {
        return Err(-1);
    }
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }
}
