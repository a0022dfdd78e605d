//! Kernel layout handed to the programs: struct member offsets from the running kernel's
//! BTF, and where the syscall tracepoints put their arguments (from tracefs format files).
//! Nothing here is compiled in, so one binary runs on every kernel with BTF.

use std::path::Path;

use anyhow::{Context as _, bail};
use collector_common::KernelOffsets;

use super::btf::{BtfError, KernelBtf};

/// Reads every offset the programs use; the error names the struct and member missing.
pub fn kernel_offsets(btf: &KernelBtf) -> Result<KernelOffsets, BtfError> {
    let at = |s: &str, m: &str| btf.member_offset(s, m);
    let (do_truncate_dentry, do_truncate_params) = param(btf, "do_truncate", "dentry");
    let (vfs_unlink_dentry, vfs_unlink_params) = param(btf, "vfs_unlink", "dentry");
    // Before 5.11 (unless backported, as in Debian 11's 5.10) its parameters were user pointers
    // named oldname/newname: no `to`.
    let (do_renameat2_to, do_renameat2_params) = param(btf, "do_renameat2", "to");
    Ok(KernelOffsets {
        task_files: at("task_struct", "files")?,
        task_fs: at("task_struct", "fs")?,
        files_fdt: at("files_struct", "fdt")?,
        fdtable_fd: at("fdtable", "fd")?,
        fdtable_max_fds: at("fdtable", "max_fds")?,
        fs_pwd_dentry: at("fs_struct", "pwd.dentry")?,
        file_inode: at("file", "f_inode")?,
        file_pos: at("file", "f_pos")?,
        file_mode: at("file", "f_mode")?,
        file_flags: at("file", "f_flags")?,
        file_dentry: at("file", "f_path.dentry")?,
        inode_ino: at("inode", "i_ino")?,
        inode_sb: at("inode", "i_sb")?,
        inode_mode: at("inode", "i_mode")?,
        inode_size: at("inode", "i_size")?,
        sb_dev: at("super_block", "s_dev")?,
        dentry_name: at("dentry", "d_name.name")?,
        dentry_parent: at("dentry", "d_parent")?,
        dentry_inode: at("dentry", "d_inode")?,
        renamedata_old_dentry: at("renamedata", "old_dentry").unwrap_or(KernelOffsets::ABSENT),
        renamedata_new_dentry: at("renamedata", "new_dentry").unwrap_or(KernelOffsets::ABSENT),
        do_truncate_dentry,
        do_truncate_length: param(btf, "do_truncate", "length").0,
        do_truncate_params,
        vfs_unlink_dir: param(btf, "vfs_unlink", "dir").0,
        vfs_unlink_dentry,
        vfs_unlink_params,
        notify_change_dentry: param(btf, "notify_change", "dentry").0,
        do_renameat2_olddfd: param(btf, "do_renameat2", "olddfd").0,
        do_renameat2_newdfd: param(btf, "do_renameat2", "newdfd").0,
        do_renameat2_to,
        do_renameat2_params,
        filename_uptr: at("filename", "uptr").unwrap_or(KernelOffsets::ABSENT),
    })
}

/// (position, parameter count) of a function's parameter; ABSENT when the BTF does not
/// say (the fentry/kprobe modes are then refused, see `unusable_reason`).
fn param(btf: &KernelBtf, function: &str, name: &str) -> (u32, u32) {
    btf.param_position(function, name).unwrap_or((KernelOffsets::ABSENT, KernelOffsets::ABSENT))
}

/// Why the fentry/kprobe programs cannot run on this kernel, if they cannot: what they read
/// is missing from its BTF, or lies beyond the six arguments they can read.
pub fn unusable_reason(o: &KernelOffsets) -> Option<String> {
    if o.renamedata_old_dentry == KernelOffsets::ABSENT {
        return Some("this kernel's vfs_rename takes no struct renamedata (Linux < 5.12)".to_owned());
    }
    if o.filename_uptr == KernelOffsets::ABSENT {
        return Some("the kernel's BTF has no member uptr of struct filename".to_owned());
    }
    let positions = [
        ("do_truncate", "dentry", o.do_truncate_dentry),
        ("do_truncate", "length", o.do_truncate_length),
        ("vfs_unlink", "dir", o.vfs_unlink_dir),
        ("vfs_unlink", "dentry", o.vfs_unlink_dentry),
        ("notify_change", "dentry", o.notify_change_dentry),
        ("do_renameat2", "olddfd", o.do_renameat2_olddfd),
        ("do_renameat2", "newdfd", o.do_renameat2_newdfd),
        ("do_renameat2", "to", o.do_renameat2_to),
    ];
    for (function, param, at) in positions {
        if at == KernelOffsets::ABSENT {
            return Some(format!("the kernel's BTF has no parameter {param} of {function}"));
        }
        if at >= MAX_ARGS {
            return Some(format!("parameter {param} of {function} is argument {at}, beyond the {MAX_ARGS} read"));
        }
    }
    // fexit reads the return value in the slot after the parameters.
    for (function, count) in [
        ("do_truncate", o.do_truncate_params),
        ("vfs_unlink", o.vfs_unlink_params),
        ("do_renameat2", o.do_renameat2_params),
    ] {
        if count >= MAX_ARGS {
            return Some(format!("{function} has {count} parameters, beyond the {MAX_ARGS} read"));
        }
    }
    None
}

/// Argument slots the programs can read by position (collector-ebpf args.rs).
const MAX_ARGS: u32 = 6;

/// Where syscall tracepoint records keep their data: (first argument, `ret`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallRecordLayout {
    pub enter_args: u32,
    pub exit_ret: u32,
}

pub fn syscall_record_layout(tracefs: &Path) -> anyhow::Result<SyscallRecordLayout> {
    let enter = tracefs.join("events/syscalls/sys_enter_write/format");
    let exit = tracefs.join("events/syscalls/sys_exit_write/format");
    Ok(SyscallRecordLayout { enter_args: field_offset(&enter, "fd")?, exit_ret: field_offset(&exit, "ret")? })
}

/// Offset of `field` in a tracefs `format` file (`field:unsigned int fd;\toffset:16;...`).
fn field_offset(format_file: &Path, field: &str) -> anyhow::Result<u32> {
    let text = std::fs::read_to_string(format_file)
        .with_context(|| format!("reading tracepoint format {}", format_file.display()))?;
    parse_field_offset(&text, field).with_context(|| format!("no field `{field}` in {}", format_file.display()))
}

fn parse_field_offset(format: &str, field: &str) -> anyhow::Result<u32> {
    for line in format.lines() {
        let Some(decl) = line.trim().strip_prefix("field:") else { continue };
        let mut parts = decl.split(';');
        let declaration = parts.next().unwrap_or_default();
        let name = declaration.rsplit([' ', '*']).next().unwrap_or_default();
        if name != field {
            continue;
        }
        for part in parts {
            if let Some(v) = part.trim().strip_prefix("offset:") {
                return Ok(v.trim().parse()?);
            }
        }
    }
    bail!("field not found")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYS_ENTER_WRITE: &str = "name: sys_enter_write\nID: 800\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\
        \tfield:unsigned int fd;\toffset:16;\tsize:8;\tsigned:0;\n\
        \tfield:const char * buf;\toffset:24;\tsize:8;\tsigned:0;\n";

    #[test]
    fn parses_field_offsets_from_a_format_file() {
        assert_eq!(parse_field_offset(SYS_ENTER_WRITE, "fd").unwrap(), 16);
        assert_eq!(parse_field_offset(SYS_ENTER_WRITE, "buf").unwrap(), 24);
        assert!(parse_field_offset(SYS_ENTER_WRITE, "count").is_err());
    }

    #[test]
    fn every_offset_resolves_on_the_running_kernel() {
        let btf = KernelBtf::running_kernel().expect("running kernel BTF");
        let o = kernel_offsets(&btf).expect("all members present");
        // f_path is a struct path {mnt, dentry}: dentry sits one pointer after f_path.
        assert_eq!(o.file_dentry, btf.member_offset("file", "f_path").unwrap() + 8);
        assert_ne!(o.file_inode, o.file_pos);
        // Everything fentry/kprobe modes read is there (this host refuses them for other reasons).
        assert_eq!(unusable_reason(&o), None);
    }

    #[test]
    fn every_offset_resolves_on_the_guest_kernel() {
        let Some(vmlinux) = std::env::var_os("COLLECTOR_GUEST_VMLINUX") else {
            // `cargo xtask test` sets it whenever the guests run, and fails if it cannot.
            eprintln!("COLLECTOR_GUEST_VMLINUX unset: guest kernel check not run (a run without the guests)");
            return;
        };
        let btf = KernelBtf::from_elf_file(Path::new(&vmlinux)).expect("guest vmlinux BTF");
        let o = kernel_offsets(&btf).expect("all members present in the guest kernel");
        assert_eq!(unusable_reason(&o), None);
    }
}
