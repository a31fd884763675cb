//! dom0 side of the `blk` scenario: `lab-blkcheck FILE PASS`.
//!
//! Reads the file behind the guest's disk (the loop device's backing
//! file) and checks that every 512-byte sector holds
//! `lab_proto::blk_sector(sector, PASS)`: what the guest wrote reached the
//! disk, seen from dom0 rather than through blkback.

use std::fs::File;
use std::io::Read;
use std::process::ExitCode;
use std::time::Instant;

use lab::xendev::arg_u32;
use lwdom::lab_proto::{blk_describe, blk_sector, BLK_SECTOR};

/// Bytes read at a time.
const CHUNK: usize = 1 << 20;

fn run(args: &[String]) -> Result<String, String> {
    let path = args
        .get(1)
        .ok_or("missing argument 1: the disk's backing file")?;
    let pass = u64::from(arg_u32(args, 2, "pass")?);
    let mut f = File::open(path).map_err(|e| format!("cannot open {path}: {e}"))?;
    let t0 = Instant::now();
    let mut buf = vec![0u8; CHUNK];
    let mut want = [0u8; BLK_SECTOR];
    let mut sector = 0u64;
    loop {
        let mut got = 0;
        while got < CHUNK {
            match f.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => return Err(format!("reading {path} at sector {sector}: {e}")),
            }
        }
        if got % BLK_SECTOR != 0 {
            return Err(format!(
                "{path} ends inside a sector ({got} bytes after sector {sector})"
            ));
        }
        for data in buf[..got].chunks_exact(BLK_SECTOR) {
            blk_sector(&mut want, sector, pass);
            if data != want {
                return Err(format!(
                    "sector {sector} of {path} does not hold pass {pass}: it holds {}",
                    blk_describe(data)
                ));
            }
            sector += 1;
        }
        if got < CHUNK {
            break;
        }
    }
    if sector == 0 {
        return Err(format!("{path} is empty"));
    }
    Ok(format!(
        "all {sector} sectors ({} MiB) of {path} hold pass {pass} (checked in {} ms)",
        (sector * BLK_SECTOR as u64) >> 20,
        t0.elapsed().as_millis()
    ))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match run(&args) {
        Ok(s) => {
            println!("lab-blkcheck: {s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("lab-blkcheck: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
