//! One file from the root directory of an ISO 9660 volume (the `cidata`
//! disk), read from the device itself: no mount, so no `isofs` module to load
//! on the boot path and no mount point another process could look into.
//!
//! Names are matched as cloud-init's NoCloud disks carry them: Rock Ridge
//! (`-rock`) or Joliet (`-joliet`), else the plain ISO 9660 name without its
//! `;1` version. The disk is the host's, so every length is checked against
//! the sector it lies in and every read is bounded.

use std::io::{Read, Seek, SeekFrom};

/// A sector of ISO 9660's volume descriptor area.
pub const SECTOR: u64 = 2048;
/// Volume descriptors looked at, from sector 16, before the terminator.
pub const MAX_VOLUME_DESCRIPTORS: u64 = 16;
/// A root directory read at most (a cidata disk's holds a handful of records).
pub const MAX_DIRECTORY_BYTES: u32 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    #[error("cannot read the disk")]
    Io(#[from] std::io::Error),
    #[error("no ISO 9660 primary volume descriptor")]
    NotIso,
    #[error("the root directory is {0} bytes, more than {MAX_DIRECTORY_BYTES}")]
    DirectoryTooLarge(u32),
    #[error("a directory record is malformed")]
    BadRecord,
    #[error("no {0} in the root directory")]
    NotFound(String),
    #[error("{name} is {size} bytes, more than {max}")]
    TooLarge { name: String, size: u32, max: usize },
}

/// Where a directory or file lies: its first byte and length.
#[derive(Debug, Clone, Copy)]
struct Extent {
    at: u64,
    len: u32,
}

/// A volume's root directory, as one descriptor (primary or Joliet) gives it.
struct Root {
    extent: Extent,
    block: u64,
    joliet: bool,
}

/// `name`'s contents from the root directory of the ISO 9660 volume on
/// `disk`, at most `max` bytes.
pub fn read_root_file(
    disk: &mut (impl Read + Seek),
    name: &str,
    max: usize,
) -> Result<Vec<u8>, IsoError> {
    let (primary, joliet) = roots(disk)?;
    // Rock Ridge's names sit in the primary tree; Joliet's in its own. Either
    // finds the file a NoCloud disk made with `-joliet -rock` carries.
    let mut found = find(disk, &primary, name)?;
    if found.is_none() {
        if let Some(j) = &joliet {
            found = find(disk, j, name)?;
        }
    }
    let file = found.ok_or_else(|| IsoError::NotFound(name.to_string()))?;
    if file.len as usize > max {
        return Err(IsoError::TooLarge {
            name: name.to_string(),
            size: file.len,
            max,
        });
    }
    let mut bytes = vec![0u8; file.len as usize];
    disk.seek(SeekFrom::Start(file.at))?;
    disk.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// The primary descriptor's root, and a Joliet supplementary one's if any.
fn roots(disk: &mut (impl Read + Seek)) -> Result<(Root, Option<Root>), IsoError> {
    let mut primary = None;
    let mut joliet = None;
    let mut vd = [0u8; SECTOR as usize];
    for n in 16..16 + MAX_VOLUME_DESCRIPTORS {
        disk.seek(SeekFrom::Start(n * SECTOR))?;
        if disk.read_exact(&mut vd).is_err() || &vd[1..6] != b"CD001" {
            break;
        }
        let block = u64::from(u16::from_le_bytes([vd[128], vd[129]]));
        let root = |joliet| -> Result<Root, IsoError> {
            if block == 0 {
                return Err(IsoError::NotIso);
            }
            let rec = &vd[156..190];
            Ok(Root {
                extent: extent(rec, block)?,
                block,
                joliet,
            })
        };
        match vd[0] {
            1 if primary.is_none() => primary = Some(root(false)?),
            // Joliet: a supplementary descriptor whose escape sequence names
            // UCS-2 level 1, 2 or 3.
            2 if joliet.is_none()
                && vd[88] == b'%'
                && vd[89] == b'/'
                && matches!(vd[90], b'@' | b'C' | b'E') =>
            {
                joliet = Some(root(true)?)
            }
            255 => break,
            _ => {}
        }
    }
    Ok((primary.ok_or(IsoError::NotIso)?, joliet))
}

/// A directory record's extent (its location and length, little-endian
/// halves of ISO 9660's both-endian fields).
fn extent(rec: &[u8], block: u64) -> Result<Extent, IsoError> {
    if rec.len() < 33 {
        return Err(IsoError::BadRecord);
    }
    let lba = u32::from_le_bytes([rec[2], rec[3], rec[4], rec[5]]);
    let len = u32::from_le_bytes([rec[10], rec[11], rec[12], rec[13]]);
    Ok(Extent {
        at: u64::from(lba) * block,
        len,
    })
}

/// The file called `name` in `root`'s directory (not a subdirectory).
fn find(
    disk: &mut (impl Read + Seek),
    root: &Root,
    name: &str,
) -> Result<Option<Extent>, IsoError> {
    if root.extent.len > MAX_DIRECTORY_BYTES {
        return Err(IsoError::DirectoryTooLarge(root.extent.len));
    }
    let mut dir = vec![0u8; root.extent.len as usize];
    disk.seek(SeekFrom::Start(root.extent.at))?;
    disk.read_exact(&mut dir)?;
    // Records never cross a logical block: a zero length byte pads to the next.
    let block = root.block as usize;
    let mut at = 0;
    while at < dir.len() {
        let len = dir[at] as usize;
        if len == 0 {
            at = (at / block + 1) * block;
            continue;
        }
        let end = at + len;
        if len < 34 || end > dir.len() || (end - 1) / block != at / block {
            return Err(IsoError::BadRecord);
        }
        let rec = &dir[at..end];
        at = end;
        let flags = rec[25];
        let id_len = rec[32] as usize;
        if 33 + id_len > rec.len() {
            return Err(IsoError::BadRecord);
        }
        let id = &rec[33..33 + id_len];
        // A directory, or one part of a file split across extents: not ours.
        if flags & 0x02 != 0 || flags & 0x80 != 0 {
            continue;
        }
        let matches = if root.joliet {
            joliet_name(id).is_some_and(|n| plain(&n) == name)
        } else {
            // The system use area follows the name and its padding byte.
            let system_use = rec.get(33 + id_len + (1 - id_len % 2)..).unwrap_or(&[]);
            match rock_ridge_name(system_use) {
                Some(n) => n == name.as_bytes(),
                None => std::str::from_utf8(id).is_ok_and(|n| plain(n).eq_ignore_ascii_case(name)),
            }
        };
        if matches {
            return Ok(Some(extent(rec, root.block)?));
        }
    }
    Ok(None)
}

/// A name without ISO 9660's `;1` version and the `.` of an empty extension.
fn plain(id: &str) -> &str {
    let id = id.split_once(';').map_or(id, |(n, _)| n);
    id.strip_suffix('.').unwrap_or(id)
}

/// A Joliet identifier: UCS-2, big-endian.
fn joliet_name(id: &[u8]) -> Option<String> {
    if !id.len().is_multiple_of(2) {
        return None;
    }
    char::decode_utf16(id.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])))
        .collect::<Result<String, _>>()
        .ok()
}

/// Rock Ridge's alternate name (its `NM` entries, in order) from a record's
/// system use area, if it has one.
fn rock_ridge_name(mut area: &[u8]) -> Option<Vec<u8>> {
    let mut name: Option<Vec<u8>> = None;
    while area.len() >= 4 {
        let len = area[2] as usize;
        if len < 4 || len > area.len() {
            break;
        }
        let (entry, rest) = area.split_at(len);
        area = rest;
        // NM: flags (bit 0: continued in the next NM), then the name's bytes.
        if &entry[..2] == b"NM" && len >= 5 && entry[4] & 0x06 == 0 {
            name.get_or_insert_with(Vec::new)
                .extend_from_slice(&entry[5..]);
        }
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::process::Command;

    /// An ISO made by genisoimage with `options`, holding `files`.
    fn iso(options: &[&str], files: &[(&str, &[u8])]) -> Option<Vec<u8>> {
        let dir = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = options.iter().map(|s| s.to_string()).collect();
        for (name, body) in files {
            let p = dir.path().join(name);
            std::fs::write(&p, body).unwrap();
            args.push(p.display().to_string());
        }
        let out = dir.path().join("out.iso");
        match Command::new("genisoimage")
            .args(["-quiet", "-volid", "cidata", "-output"])
            .arg(&out)
            .args(&args)
            .status()
        {
            Ok(s) => assert!(s.success(), "genisoimage {args:?}"),
            // The e2e tests need it too; apt-get install genisoimage.
            Err(_) => {
                eprintln!("skipped: genisoimage is not installed");
                return None;
            }
        }
        Some(std::fs::read(out).unwrap())
    }

    const USER_DATA: &[u8] = b"#cloud-config\nwrite_files: []\n";

    #[test]
    fn user_data_is_read_as_each_nocloud_form_names_it() {
        let meta = b"instance-id: podvm\n".as_slice();
        for options in [
            &["-joliet", "-rock"][..],
            &["-rock"],
            &["-joliet"],
            // Plain ISO 9660 with relaxed names (no Rock Ridge, no Joliet).
            &[
                "-full-iso9660-filenames",
                "-relaxed-filenames",
                "-allow-lowercase",
            ],
        ] {
            let Some(img) = iso(options, &[("meta-data", meta), ("user-data", USER_DATA)]) else {
                return;
            };
            let got = read_root_file(&mut Cursor::new(&img), "user-data", 1024)
                .unwrap_or_else(|e| panic!("{options:?}: {e}"));
            assert_eq!(got, USER_DATA, "{options:?}");
            let got = read_root_file(&mut Cursor::new(&img), "meta-data", 1024).unwrap();
            assert_eq!(got, meta, "{options:?}");
        }
    }

    #[test]
    fn a_missing_or_oversized_file_is_refused_by_name() {
        let Some(img) = iso(&["-joliet", "-rock"], &[("user-data", USER_DATA)]) else {
            return;
        };
        let e = read_root_file(&mut Cursor::new(&img), "vendor-data", 1024).unwrap_err();
        assert!(
            matches!(e, IsoError::NotFound(ref n) if n == "vendor-data"),
            "{e}"
        );
        // At the bound it is read; one byte under, refused.
        let n = USER_DATA.len();
        assert!(read_root_file(&mut Cursor::new(&img), "user-data", n).is_ok());
        let e = read_root_file(&mut Cursor::new(&img), "user-data", n - 1).unwrap_err();
        assert!(
            matches!(e, IsoError::TooLarge { size, .. } if size as usize == n),
            "{e}"
        );
    }

    #[test]
    fn a_hostile_disk_is_refused_without_a_panic() {
        let Some(img) = iso(&["-joliet", "-rock"], &[("user-data", USER_DATA)]) else {
            return;
        };
        // Not ISO at all.
        let e = read_root_file(&mut Cursor::new(vec![0u8; 64 * 1024]), "user-data", 1024);
        assert!(matches!(e, Err(IsoError::NotIso)), "{e:?}");
        // A root directory claimed larger than the bound.
        let mut big = img.clone();
        big[16 * 2048 + 156 + 10..16 * 2048 + 156 + 14]
            .copy_from_slice(&(MAX_DIRECTORY_BYTES + 1).to_le_bytes());
        let e = read_root_file(&mut Cursor::new(&big), "user-data", 1024).unwrap_err();
        assert!(matches!(e, IsoError::DirectoryTooLarge(_)), "{e}");
        // Every byte of the descriptors and the directories flipped in turn:
        // an answer or an error, never a panic.
        for at in 16 * 2048..img.len().min(40 * 2048) {
            let mut bad = img.clone();
            bad[at] ^= 0xff;
            let _ = read_root_file(&mut Cursor::new(&bad), "user-data", 1024);
        }
        // Truncated anywhere.
        for cut in (0..img.len()).step_by(512) {
            let _ = read_root_file(&mut Cursor::new(&img[..cut]), "user-data", 1024);
        }
    }

    #[test]
    fn rock_ridge_names_join_their_continued_parts() {
        let mut area = Vec::new();
        area.extend_from_slice(b"PX\x0c\x01\0\0\0\0\0\0\0\0");
        area.extend_from_slice(b"NM\x0a\x01\x01user-");
        area.extend_from_slice(b"NM\x09\x01\x00data");
        assert_eq!(rock_ridge_name(&area).unwrap(), b"user-data");
        // "." and ".." entries carry flags, not names.
        assert!(rock_ridge_name(b"NM\x05\x01\x02").is_none());
        // A length running past the area ends the walk.
        assert!(rock_ridge_name(b"NM\xff\x01\x00user-data").is_none());
    }
}
