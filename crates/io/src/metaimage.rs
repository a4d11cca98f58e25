//! MetaImage (`.mha` with the data inline, `.mhd` with a separate raw file) as ITK writes it: 2D–4D, every
//! `MET_` scalar type, several channels, either byte order, zlib-compressed data.
//!
//! ITK places voxels in LPS: `world = Offset + TransformMatrixᵀ · diag(ElementSpacing) · index` (each group of
//! `NDims` values of `TransformMatrix` is one axis' direction). The affine of the returned image is in RAS+
//! (x and y negated), like every other image here.
use std::io::Read;
use std::path::Path;

use crate::image::Affine;
use crate::{DataError, Image, Result};

fn element(t: &str) -> Option<(&'static str, usize)> {
    Some(match t {
        "MET_UCHAR" => ("uint8", 1),
        "MET_CHAR" => ("int8", 1),
        "MET_USHORT" => ("uint16", 2),
        "MET_SHORT" => ("int16", 2),
        "MET_UINT" => ("uint32", 4),
        "MET_INT" => ("int32", 4),
        "MET_ULONG_LONG" | "MET_ULONG" => ("uint64", 8),
        "MET_LONG_LONG" | "MET_LONG" => ("int64", 8),
        "MET_FLOAT" => ("float32", 4),
        "MET_DOUBLE" => ("float64", 8),
        _ => return None,
    })
}

/// Reads a `.mha` or `.mhd` file.
pub fn load(path: &Path) -> Result<Image> {
    let bytes_len = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?.len();
    let mut file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    // The header is text; read at most 64 KiB of it.
    let mut head = Vec::new();
    (&mut file).take(65536).read_to_end(&mut head).map_err(|e| DataError::io(path, e))?;
    if head.is_empty() {
        return Err(DataError::format(path, "empty file"));
    }
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut data_start = None;
    let mut pos = 0;
    while pos < head.len() {
        let end = head[pos..].iter().position(|&c| c == b'\n').map_or(head.len(), |e| pos + e);
        let line = String::from_utf8_lossy(&head[pos..end]).trim().to_string();
        pos = end + 1;
        if line.is_empty() {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(DataError::format(path, format!("not a MetaImage header line: '{}'", line.chars().take(40).collect::<String>())));
        };
        let (k, v) = (k.trim().to_string(), v.trim().to_string());
        let last = k == "ElementDataFile";
        fields.push((k, v));
        if last {
            data_start = Some(pos.min(head.len()));
            break;
        }
    }
    let get = |k: &str| fields.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let data_file = get("ElementDataFile").ok_or_else(|| DataError::format(path, "MetaImage header has no ElementDataFile"))?;
    let ndims: usize = get("NDims")
        .and_then(|v| v.parse().ok())
        .filter(|n| (1..=4).contains(n))
        .ok_or_else(|| DataError::format(path, "missing or invalid NDims"))?;
    let nums = |k: &str| -> Result<Option<Vec<f64>>> {
        get(k)
            .map(|v| {
                v.split_whitespace()
                    .map(|x| x.parse::<f64>().map_err(|_| DataError::format(path, format!("invalid number '{x}' in {k}"))))
                    .collect::<Result<Vec<f64>>>()
            })
            .transpose()
    };
    let dims: Vec<usize> = nums("DimSize")?
        .ok_or_else(|| DataError::format(path, "missing DimSize"))?
        .into_iter()
        .map(|d| {
            if d >= 1.0 && d.fract() == 0.0 && d < 1e9 {
                Ok(d as usize)
            } else {
                Err(DataError::format(path, format!("invalid DimSize value {d}")))
            }
        })
        .collect::<Result<_>>()?;
    if dims.len() != ndims {
        return Err(DataError::format(path, format!("DimSize has {} values for NDims = {ndims}", dims.len())));
    }
    let (dtype, size) = get("ElementType")
        .and_then(element)
        .ok_or_else(|| DataError::format(path, format!("unsupported ElementType {:?}", get("ElementType").unwrap_or("(none)"))))?;
    let channels: usize = get("ElementNumberOfChannels")
        .map_or(Ok(1), |v| v.parse().map_err(|_| DataError::format(path, "invalid ElementNumberOfChannels")))?;
    if channels == 0 || channels > 1024 {
        return Err(DataError::format(path, format!("invalid ElementNumberOfChannels {channels}")));
    }
    let msb = get("BinaryDataByteOrderMSB").or(get("ElementByteOrderMSB")).is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let compressed = get("CompressedData").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let spacing = nums("ElementSpacing")?.or(nums("ElementSize")?).unwrap_or_else(|| vec![1.0; ndims]);
    let offset = nums("Offset")?.or(nums("Origin")?).or(nums("Position")?).unwrap_or_else(|| vec![0.0; ndims]);
    let matrix = nums("TransformMatrix")?.or(nums("Rotation")?).or(nums("Orientation")?);
    if spacing.len() < ndims || offset.len() < ndims || matrix.as_ref().is_some_and(|m| m.len() != ndims * ndims) {
        return Err(DataError::format(path, "ElementSpacing, Offset and TransformMatrix must match NDims"));
    }
    let voxels = dims.iter().try_fold(channels as u64, |a, &d| a.checked_mul(d as u64));
    let nbytes = voxels.and_then(|v| v.checked_mul(size as u64)).ok_or_else(|| DataError::format(path, "DimSize overflows"))?;

    // Where the bytes are.
    let (source, source_len, skip) = if data_file == "LOCAL" {
        let start = data_start.unwrap_or(head.len()) as u64;
        (path.to_path_buf(), bytes_len, start)
    } else {
        if data_file.contains('%') || data_file.starts_with("LIST") {
            return Err(DataError::format(path, "multi-file MetaImage data (LIST or patterns) is not supported"));
        }
        // The data file must lie in the header's folder (or below it): an absolute path or `..` could make a header
        // read any file on the machine.
        if data_file.is_empty() || !Path::new(data_file).components().all(|c| matches!(c, std::path::Component::Normal(_))) {
            return Err(DataError::format(
                path,
                format!("ElementDataFile '{data_file}' must name a file in the header's folder (no absolute path, no '..')"),
            ));
        }
        let p = path.with_file_name(data_file);
        let len = std::fs::metadata(&p).map_err(|e| DataError::io(&p, e))?.len();
        let header_size: i64 = get("HeaderSize").and_then(|v| v.parse().ok()).unwrap_or(0);
        let skip = if header_size < 0 { len.saturating_sub(nbytes) } else { header_size as u64 };
        (p, len, skip)
    };
    let available = source_len.saturating_sub(skip);
    if compressed && nbytes > available.saturating_mul(crate::formats::MAX_DEFLATE_RATIO) || !compressed && nbytes > available {
        return Err(DataError::format(
            &source,
            format!("header declares {dims:?}×{channels} {dtype} values ({nbytes} bytes), but the file holds {available}"),
        ));
    }
    let mut f = std::fs::File::open(&source).map_err(|e| DataError::io(&source, e))?;
    std::io::copy(&mut (&mut f).take(skip), &mut std::io::sink()).map_err(|e| DataError::io(&source, e))?;
    let mut raw = Vec::new();
    if compressed { flate2::read::ZlibDecoder::new(f).take(nbytes).read_to_end(&mut raw) } else { f.take(nbytes).read_to_end(&mut raw) }
        .map_err(|e| DataError::format(&source, format!("cannot read voxel data: {e}")))?;
    if (raw.len() as u64) < nbytes {
        return Err(DataError::format(&source, format!("truncated: {} of {nbytes} bytes of voxel data", raw.len())));
    }
    let n = (nbytes / size as u64) as usize;
    let mut values = Vec::with_capacity(n);
    for chunk in raw.chunks_exact(size) {
        let mut b = [0u8; 8];
        b[..size].copy_from_slice(chunk);
        if msb {
            b[..size].reverse();
        }
        values.push(match dtype {
            "uint8" => b[0] as f32,
            "int8" => b[0] as i8 as f32,
            "uint16" => u16::from_le_bytes([b[0], b[1]]) as f32,
            "int16" => i16::from_le_bytes([b[0], b[1]]) as f32,
            "uint32" => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
            "int32" => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
            "uint64" => u64::from_le_bytes(b) as f32,
            "int64" => i64::from_le_bytes(b) as f32,
            "float32" => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            _ => f64::from_le_bytes(b) as f32,
        });
    }
    // Interleaved channels → planar; a 4th dimension folds into channels.
    let (spatial, extra) = if ndims == 4 { (dims[..3].to_vec(), dims[3]) } else { (dims.clone(), 1) };
    let nvox: usize = spatial.iter().product();
    let data = if channels == 1 {
        values
    } else {
        let mut planar = vec![0f32; values.len()];
        for (i, px) in values.chunks_exact(channels).enumerate() {
            let (t, v) = (i / nvox, i % nvox);
            for (c, &x) in px.iter().enumerate() {
                planar[(c * extra + t) * nvox + v] = x;
            }
        }
        planar
    };
    let mut affine: Affine = crate::image::IDENTITY;
    let sdim = spatial.len().min(3);
    for axis in 0..sdim {
        for r in 0..sdim {
            let dir = matrix.as_ref().map_or(if r == axis { 1.0 } else { 0.0 }, |m| m[axis * ndims + r]);
            let sign = if r < 2 { -1.0 } else { 1.0 };
            affine[r][axis] = sign * dir * spacing[axis];
        }
    }
    for r in 0..sdim {
        affine[r][3] = if r < 2 { -offset[r] } else { offset[r] };
    }
    Image::new(data, spatial, channels * extra, affine, dtype).map_err(|e| DataError::format(path, e.to_string()))
}
