//! Struct member offsets from a kernel's BTF (`/sys/kernel/btf/vmlinux`, or the `.BTF`
//! section of a vmlinux ELF image), so the programs learn the layout of the kernel they run
//! on at start-up and none is compiled in.
//!
//! Only what offset lookup needs is parsed: the type table (to walk structs, unions and
//! the typedef/const/volatile chains between them) and the string section.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading BTF from {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("malformed BTF: {0}")]
    Malformed(String),
    #[error("{0} has no .BTF section (kernel built without CONFIG_DEBUG_INFO_BTF?)")]
    NoBtfSection(PathBuf),
    #[error("kernel BTF has no struct {0}")]
    StructNotFound(String),
    #[error("kernel BTF: struct {struct_name} has no member {member_path}")]
    MemberNotFound { struct_name: String, member_path: String },
    #[error("kernel BTF has no function {0}")]
    FunctionNotFound(String),
    #[error("kernel BTF: function {function} has no parameter {param}")]
    ParamNotFound { function: String, param: String },
    #[error("kernel BTF: {struct_name}.{member_path} is a bitfield, which has no byte offset")]
    Bitfield { struct_name: String, member_path: String },
}

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Clone, Debug)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// Offset in bits from the start of the enclosing struct or union.
    bit_offset: u32,
    bitfield: bool,
}

#[derive(Clone, Debug)]
struct Type {
    kind: u32,
    name_off: u32,
    /// `size` for structs/unions, referenced type for typedef/const/volatile/...
    size_or_type: u32,
    members: Vec<Member>,
}

pub struct KernelBtf {
    /// Index = type id; id 0 is `void`.
    types: Vec<Type>,
    strings: Vec<u8>,
    /// Struct/union name -> first id with members.
    by_name: HashMap<String, u32>,
    /// Parameter names of the functions in PARAMS_OF (only those: every prototype's
    /// parameters would add megabytes to the start-up peak).
    params: HashMap<String, Vec<String>>,
}

/// Functions whose parameter positions the programs need (offsets.rs).
const PARAMS_OF: &[&str] = &["do_truncate", "vfs_unlink", "notify_change", "do_renameat2"];

impl KernelBtf {
    #[cfg(test)]
    pub fn running_kernel() -> Result<Self, BtfError> {
        Self::from_raw_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    pub fn from_raw_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Io { path: path.to_owned(), source })?;
        Self::from_raw_bytes(data)
    }

    pub fn from_elf_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Io { path: path.to_owned(), source })?;
        let section = elf_section(&data, ".BTF")?.ok_or_else(|| BtfError::NoBtfSection(path.to_owned()))?;
        Self::from_raw_bytes(section.to_vec())
    }

    pub fn from_raw_bytes(data: Vec<u8>) -> Result<Self, BtfError> {
        let r = Reader(&data);
        if r.u16(0)? != MAGIC {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)".into()));
        }
        let hdr_len = r.u32(4)? as usize;
        let (type_off, type_len) = (r.u32(8)? as usize, r.u32(12)? as usize);
        let (str_off, str_len) = (r.u32(16)? as usize, r.u32(20)? as usize);
        let types_at = hdr_len + type_off;
        let strings_at = hdr_len + str_off;
        let strings = data.get(strings_at..strings_at + str_len).ok_or_else(|| malformed("string section"))?.to_vec();
        let mut types = vec![Type { kind: 0, name_off: 0, size_or_type: 0, members: Vec::new() }];
        let mut at = types_at;
        let end = types_at + type_len;
        // (id, byte position) of every prototype, and the prototype of each wanted function.
        let mut protos = Vec::new();
        let mut wanted = Vec::new();
        while at < end {
            let (ty, len) = parse_type(&r, at)?;
            let id = types.len() as u32;
            match ty.kind {
                KIND_FUNC_PROTO => protos.push((id, at)),
                KIND_FUNC if PARAMS_OF.contains(&string_at(&strings, ty.name_off)) => {
                    wanted.push((string_at(&strings, ty.name_off).to_owned(), ty.size_or_type));
                }
                _ => {}
            }
            types.push(ty);
            at += len;
        }
        let mut params = HashMap::new();
        for (function, proto) in wanted {
            let Ok(i) = protos.binary_search_by_key(&proto, |&(id, _)| id) else { continue };
            let at = protos[i].1;
            let count = (r.u32(at + 4)? & 0xffff) as usize;
            let names = (0..count)
                .map(|i| r.u32(at + 12 + i * 8).map(|name_off| string_at(&strings, name_off).to_owned()))
                .collect::<Result<Vec<_>, _>>()?;
            params.insert(function, names);
        }
        drop(protos);
        let mut btf = KernelBtf { types, strings, by_name: HashMap::new(), params };
        for (id, ty) in btf.types.iter().enumerate() {
            if matches!(ty.kind, KIND_STRUCT | KIND_UNION) && !ty.members.is_empty() {
                let name = btf.string(ty.name_off).to_owned();
                if !name.is_empty() {
                    btf.by_name.entry(name).or_insert(id as u32);
                }
            }
        }
        Ok(btf)
    }

    /// Byte offset of `member_path` ("f_path.dentry") in struct `struct_name`. Members of
    /// anonymous structs and unions are found as if they were direct members.
    pub fn member_offset(&self, struct_name: &str, member_path: &str) -> Result<u32, BtfError> {
        let mut type_id = *self.by_name.get(struct_name).ok_or_else(|| BtfError::StructNotFound(struct_name.into()))?;
        let mut bits = 0u32;
        for part in member_path.split('.') {
            let composite = self.resolve(type_id);
            let (member_bits, member) = self.find_member(composite, part).ok_or_else(|| BtfError::MemberNotFound {
                struct_name: struct_name.into(),
                member_path: member_path.into(),
            })?;
            if member.bitfield || member_bits % 8 != 0 {
                return Err(BtfError::Bitfield { struct_name: struct_name.into(), member_path: member_path.into() });
            }
            bits += member_bits;
            type_id = member.type_id;
        }
        Ok(bits / 8)
    }

    /// Position (from 0) of parameter `param` of kernel function `function` (one of
    /// PARAMS_OF), and how many parameters it has.
    pub fn param_position(&self, function: &str, param: &str) -> Result<(u32, u32), BtfError> {
        let names = self.params.get(function).ok_or_else(|| BtfError::FunctionNotFound(function.into()))?;
        let position = names
            .iter()
            .position(|n| n == param)
            .ok_or_else(|| BtfError::ParamNotFound { function: function.into(), param: param.into() })?;
        Ok((position as u32, names.len() as u32))
    }

    #[cfg(test)]
    pub fn has_member(&self, struct_name: &str, member_path: &str) -> bool {
        self.member_offset(struct_name, member_path).is_ok()
    }

    #[cfg(test)]
    pub fn struct_size(&self, struct_name: &str) -> Result<u32, BtfError> {
        let id = *self.by_name.get(struct_name).ok_or_else(|| BtfError::StructNotFound(struct_name.into()))?;
        Ok(self.types[id as usize].size_or_type)
    }

    /// `name` among the members of composite `id`, looking inside anonymous members;
    /// returns its bit offset from the start of `id`.
    fn find_member(&self, id: u32, name: &str) -> Option<(u32, &Member)> {
        let ty = self.types.get(id as usize)?;
        if !matches!(ty.kind, KIND_STRUCT | KIND_UNION) {
            return None;
        }
        for member in &ty.members {
            let member_name = self.string(member.name_off);
            if member_name == name {
                return Some((member.bit_offset, member));
            }
            if member_name.is_empty()
                && let Some((inner, found)) = self.find_member(self.resolve(member.type_id), name)
            {
                return Some((member.bit_offset + inner, found));
            }
        }
        None
    }

    /// Follows typedef/const/volatile/restrict/type-tag to the underlying type.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(t)
                    if matches!(t.kind, KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG) =>
                {
                    id = t.size_or_type;
                }
                _ => break,
            }
        }
        id
    }

    fn string(&self, offset: u32) -> &str {
        string_at(&self.strings, offset)
    }
}

fn string_at(strings: &[u8], offset: u32) -> &str {
    let tail = strings.get(offset as usize..).unwrap_or_default();
    let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
    std::str::from_utf8(&tail[..end]).unwrap_or_default()
}

fn malformed(what: &str) -> BtfError {
    BtfError::Malformed(format!("{what} out of bounds"))
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u16(&self, at: usize) -> Result<u16, BtfError> {
        let b = self.0.get(at..at + 2).ok_or_else(|| malformed("header"))?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&self, at: usize) -> Result<u32, BtfError> {
        let b = self.0.get(at..at + 4).ok_or_else(|| malformed("type data"))?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&self, at: usize) -> Result<u64, BtfError> {
        Ok(u64::from(self.u32(at)?) | (u64::from(self.u32(at + 4)?) << 32))
    }
}

/// One `struct btf_type` and its trailing data; returns it and its total length.
fn parse_type(r: &Reader, at: usize) -> Result<(Type, usize), BtfError> {
    let name_off = r.u32(at)?;
    let info = r.u32(at + 4)?;
    let size_or_type = r.u32(at + 8)?;
    let vlen = (info & 0xffff) as usize;
    let kind = (info >> 24) & 0x1f;
    let kind_flag = info >> 31 == 1;
    let mut members = Vec::new();
    let extra = match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION => {
            for i in 0..vlen {
                let m = at + 12 + i * 12;
                let offset = r.u32(m + 8)?;
                let (bit_offset, bitfield) =
                    if kind_flag { (offset & 0xff_ffff, offset >> 24 != 0) } else { (offset, false) };
                members.push(Member { name_off: r.u32(m)?, type_id: r.u32(m + 4)?, bit_offset, bitfield });
            }
            vlen * 12
        }
        KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
        KIND_DATASEC | KIND_ENUM64 => vlen * 12,
        0..=19 => 0,
        other => return Err(BtfError::Malformed(format!("unknown BTF kind {other} at byte {at}"))),
    };
    Ok((Type { kind, name_off, size_or_type, members }, 12 + extra))
}

/// The bytes of section `name` of a little-endian ELF64 image, if it has one.
fn elf_section<'a>(data: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, BtfError> {
    let r = Reader(data);
    if data.get(..4) != Some(b"\x7fELF") || data.get(4) != Some(&2) || data.get(5) != Some(&1) {
        return Err(BtfError::Malformed("not a little-endian ELF64 image".into()));
    }
    let shoff = r.u64(0x28)? as usize;
    let shentsize = r.u16(0x3a)? as usize;
    let shnum = r.u16(0x3c)? as usize;
    let shstrndx = r.u16(0x3e)? as usize;
    let header = |i: usize| -> Result<(u32, usize, usize), BtfError> {
        let h = shoff + i * shentsize;
        Ok((r.u32(h)?, r.u64(h + 0x18)? as usize, r.u64(h + 0x20)? as usize))
    };
    let (_, names_at, names_len) = header(shstrndx)?;
    let names = data.get(names_at..names_at + names_len).ok_or_else(|| malformed("section names"))?;
    for i in 0..shnum {
        let (name_off, at, len) = header(i)?;
        let tail = names.get(name_off as usize..).unwrap_or_default();
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        if &tail[..end] == name.as_bytes() {
            return Ok(Some(data.get(at..at + len).ok_or_else(|| malformed("section"))?));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob built by hand:
    /// 1 int; 2 struct inner { int a@0; int b@32 }; 3 typedef inner_t = 2;
    /// 4 union (anonymous) { inner_t in@0; int c@0 }; 5 struct outer (size 24) { int x@0;
    /// <anon union 4>@64; int bits:3 @128 (bitfield) }; 6 int (int dentry, int length);
    /// 7 func do_truncate = 6
    fn synthetic() -> Vec<u8> {
        let strings = b"\0int\0inner\0a\0b\0inner_t\0in\0c\0outer\0x\0bits\0dentry\0length\0do_truncate\0".to_vec();
        let s = |name: &str| -> u32 {
            let needle = [b"\0", name.as_bytes(), b"\0"].concat();
            strings.windows(needle.len()).position(|w| w == needle).unwrap() as u32 + 1
        };
        let mut t = Vec::new();
        let mut push = |v: u32| t.extend_from_slice(&v.to_le_bytes());
        push(s("int"));
        push(KIND_INT << 24);
        push(4);
        push(32); // 1
        push(s("inner"));
        push((KIND_STRUCT << 24) | 2);
        push(8); // 2
        push(s("a"));
        push(1);
        push(0);
        push(s("b"));
        push(1);
        push(32);
        push(s("inner_t"));
        push(KIND_TYPEDEF << 24);
        push(2); // 3
        push(0);
        push((KIND_UNION << 24) | 2);
        push(8); // 4
        push(s("in"));
        push(3);
        push(0);
        push(s("c"));
        push(1);
        push(0);
        push(s("outer"));
        push((1 << 31) | (KIND_STRUCT << 24) | 3);
        push(24); // 5 (kind_flag)
        push(s("x"));
        push(1);
        push(0);
        push(0);
        push(4);
        push(64);
        push(s("bits"));
        push(1);
        push((3 << 24) | 128);
        push(0);
        push((KIND_FUNC_PROTO << 24) | 2);
        push(1); // 6
        push(s("dentry"));
        push(1);
        push(s("length"));
        push(1);
        push(s("do_truncate"));
        push(KIND_FUNC << 24);
        push(6); // 7
        let mut blob = Vec::new();
        blob.extend_from_slice(&MAGIC.to_le_bytes());
        blob.extend_from_slice(&[1, 0]); // version, flags
        for v in [24u32, 0, t.len() as u32, t.len() as u32, strings.len() as u32] {
            blob.extend_from_slice(&v.to_le_bytes());
        }
        blob.extend_from_slice(&t);
        blob.extend_from_slice(&strings);
        blob
    }

    /// Wraps `btf` as the `.BTF` section of a minimal ELF64 image.
    fn elf_with_btf(btf: &[u8]) -> Vec<u8> {
        let names = b"\0.shstrtab\0.BTF\0";
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let names_at = elf.len();
        elf.extend_from_slice(names);
        let btf_at = elf.len();
        elf.extend_from_slice(btf);
        let shoff = elf.len();
        let section = |name: u32, at: usize, len: usize| {
            let mut h = vec![0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(at as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(len as u64).to_le_bytes());
            h
        };
        let headers = [section(0, 0, 0), section(1, names_at, names.len()), section(11, btf_at, btf.len())].concat();
        elf.extend_from_slice(&headers);
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        elf
    }

    #[test]
    fn offsets_add_up_through_anonymous_unions_and_typedefs() {
        let btf = KernelBtf::from_raw_bytes(synthetic()).unwrap();
        assert_eq!(btf.member_offset("outer", "x").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "c").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "in.b").unwrap(), 12);
        assert_eq!(btf.member_offset("inner", "b").unwrap(), 4);
        assert_eq!(btf.struct_size("outer").unwrap(), 24);
        assert!(matches!(btf.member_offset("outer", "bits"), Err(BtfError::Bitfield { .. })));
        let err = btf.member_offset("outer", "in.zz").unwrap_err().to_string();
        assert_eq!(err, "kernel BTF: struct outer has no member in.zz");
        assert_eq!(btf.member_offset("nope", "x").unwrap_err().to_string(), "kernel BTF has no struct nope");
    }

    #[test]
    fn parameters_are_found_by_name() {
        let btf = KernelBtf::from_raw_bytes(synthetic()).unwrap();
        assert_eq!(btf.param_position("do_truncate", "dentry").unwrap(), (0, 2));
        assert_eq!(btf.param_position("do_truncate", "length").unwrap(), (1, 2));
        let err = btf.param_position("do_truncate", "filp").unwrap_err().to_string();
        assert_eq!(err, "kernel BTF: function do_truncate has no parameter filp");
        assert_eq!(btf.param_position("outer", "x").unwrap_err().to_string(), "kernel BTF has no function outer");
    }

    #[test]
    fn reads_the_btf_section_of_an_elf_image() {
        let dir = std::env::temp_dir().join(format!("collector-btf-{}", std::process::id()));
        std::fs::write(&dir, elf_with_btf(&synthetic())).unwrap();
        let btf = KernelBtf::from_elf_file(&dir).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(btf.member_offset("outer", "in.b").unwrap(), 12);
    }

    #[test]
    fn running_kernel_layout_is_consistent() {
        let btf = KernelBtf::running_kernel().expect("this kernel has BTF");
        let path = btf.member_offset("file", "f_path").unwrap();
        assert_eq!(
            btf.member_offset("file", "f_path.dentry").unwrap(),
            path + btf.member_offset("path", "dentry").unwrap()
        );
        assert_eq!(
            btf.member_offset("dentry", "d_name.name").unwrap(),
            btf.member_offset("dentry", "d_name").unwrap() + btf.member_offset("qstr", "name").unwrap()
        );
        for (s, m) in [("file", "f_inode"), ("inode", "i_ino"), ("inode", "i_size"), ("task_struct", "files")] {
            assert!(btf.member_offset(s, m).unwrap() < btf.struct_size(s).unwrap(), "{s}.{m}");
        }
        assert!(btf.has_member("inode", "i_nlink"), "a member of an anonymous union");
        // Since 6.3: do_truncate(idmap, dentry, length, time_attrs, filp).
        assert_eq!(btf.param_position("do_truncate", "dentry").unwrap(), (1, 5));
        assert_eq!(btf.param_position("do_truncate", "length").unwrap(), (2, 5));
        // Since 5.11: do_renameat2(olddfd, from, newdfd, to, flags).
        assert_eq!(btf.param_position("do_renameat2", "to").unwrap(), (3, 5));
        assert!(btf.member_offset("filename", "uptr").is_ok());
    }
}
