//! `kal report`: turn the library's raw stack frames into symbolized ones.
//!
//! The library writes frames as LeakSanitizer does without a symbolizer:
//! `    #N 0xPC  (MODULE+0xOFFSET)`, where OFFSET is the address inside
//! MODULE's own ELF address space (the address minus its load bias).  Each
//! such line becomes one line per (inlined) function, as LeakSanitizer
//! prints them: `    #N 0xPC in FUNCTION FILE:LINE:COLUMN` where the object
//! has debug information (its own or a separate one found by build-id or
//! debuglink), `    #N 0xPC in FUNCTION (MODULE+0xOFFSET)` where only a
//! symbol is known, and the line unchanged otherwise.  Frame numbers are
//! renumbered within each stack when inlined frames are added.  Every other
//! line passes through as it is.

use std::collections::HashMap;
use std::fmt::Write as _;

/// A parsed raw frame line.
struct Raw<'a> {
    indent: &'a str,
    pc: &'a str,
    module: &'a str,
    offset: u64,
    rest: &'a str,
}

/// `    #N 0xPC  (MODULE+0xOFF)REST`.
fn parse(line: &str) -> Option<Raw<'_>> {
    let hash = line.find('#')?;
    let (indent, tail) = line.split_at(hash);
    if !indent.chars().all(|c| c == ' ') || indent.is_empty() {
        return None;
    }
    let (num, tail) = tail[1..].split_once(' ')?;
    num.parse::<u32>().ok()?;
    let (pc, tail) = tail.split_once("  (")?;
    if !pc.starts_with("0x") {
        return None;
    }
    let close = tail.find(')')?;
    let (inner, rest) = (&tail[..close], &tail[close + 1..]);
    let plus = inner.rfind("+0x")?;
    let module = &inner[..plus];
    let offset = u64::from_str_radix(&inner[plus + 3..], 16).ok()?;
    Some(Raw {
        indent,
        pc,
        module,
        offset,
        rest,
    })
}

/// The object's separate debug file, where Debian's `-dbg` / `-dbgsym`
/// packages put it: `/usr/lib/debug/.build-id/xx/yyyy.debug`, named by the
/// object's build-id.
fn separate_debug_file(module: &str) -> Option<std::path::PathBuf> {
    use object::Object;
    let data = std::fs::read(module).ok()?;
    let file = object::File::parse(&*data).ok()?;
    let id = file.build_id().ok()??;
    if id.len() < 2 {
        return None;
    }
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let p = std::path::PathBuf::from(format!(
        "/usr/lib/debug/.build-id/{}/{}.debug",
        &hex[..2],
        &hex[2..]
    ));
    p.exists().then_some(p)
}

fn is_allocator(module: &str) -> bool {
    module.rsplit('/').next() == Some("librmalloc.so")
}

/// Symbolizes frames, keeping one loader per object file.
#[derive(Default)]
pub struct Symbolizer {
    loaders: HashMap<String, Option<addr2line::Loader>>,
}

impl Symbolizer {
    fn loader(&mut self, module: &str) -> Option<&addr2line::Loader> {
        self.loaders
            .entry(module.to_string())
            .or_insert_with(|| {
                let path = separate_debug_file(module).unwrap_or_else(|| module.into());
                addr2line::Loader::new(path).ok()
            })
            .as_ref()
    }

    /// The symbolized form of one raw frame (one or more lines, each
    /// without the frame number, which the caller assigns): `None` when
    /// nothing is known about it.
    fn frames(&mut self, raw: &Raw) -> Option<Vec<String>> {
        let module = raw.module;
        let loader = self.loader(module)?;
        let mut out = Vec::new();
        if let Ok(mut it) = loader.find_frames(raw.offset) {
            while let Ok(Some(f)) = it.next() {
                let func = f
                    .function
                    .as_ref()
                    .and_then(|n| n.demangle().ok().map(|s| s.into_owned()));
                let loc = f.location.as_ref().and_then(|l| {
                    let file = l.file?;
                    let mut s = file.to_string();
                    if let Some(line) = l.line {
                        let _ = write!(s, ":{line}");
                        if let Some(col) = l.column {
                            let _ = write!(s, ":{col}");
                        }
                    }
                    Some(s)
                });
                match (func, loc) {
                    (Some(func), Some(loc)) => out.push(format!("in {func} {loc}")),
                    (Some(func), None) => {
                        out.push(format!("in {func} ({module}+{:#x})", raw.offset))
                    }
                    (None, Some(loc)) => out.push(loc),
                    (None, None) => {}
                }
            }
        }
        if out.is_empty() {
            let sym = loader.find_symbol(raw.offset)?;
            let name = addr2line::demangle_auto(sym.into(), None).into_owned();
            out.push(format!("in {name} ({module}+{:#x})", raw.offset));
        }
        Some(out)
    }

    /// Symbolize a whole report text.
    pub fn text(&mut self, input: &str) -> String {
        let mut out = String::with_capacity(input.len() * 2);
        let mut next = 0u32; // frame number within the current stack
        for line in input.lines() {
            let Some(raw) = parse(line) else {
                next = 0;
                out.push_str(line);
                out.push('\n');
                continue;
            };
            match self.frames(&raw).map(|mut v| {
                // The allocator's own frame: one line (its entry point's
                // inlined callees are of no interest), as LeakSanitizer
                // shows one frame for its `malloc`.
                if is_allocator(raw.module) && v.len() > 1 {
                    v.drain(..v.len() - 1);
                }
                v
            }) {
                Some(lines) => {
                    for l in lines {
                        // LeakSanitizer adds the build-id to module
                        // locations only, not to file:line ones.
                        let rest = if l.ends_with(')') { raw.rest } else { "" };
                        let _ = writeln!(out, "{}#{next} {} {l}{rest}", raw.indent, raw.pc);
                        next += 1;
                    }
                }
                None => {
                    let _ = writeln!(
                        out,
                        "{}#{next} {}  ({}+{:#x}){}",
                        raw.indent, raw.pc, raw.module, raw.offset, raw.rest
                    );
                    next += 1;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_raw_frames_only() {
        let r = parse("    #3 0x7f00  (/lib/x86_64-linux-gnu/libc.so.6+0x27249)").unwrap();
        assert_eq!((r.indent, r.pc, r.offset), ("    ", "0x7f00", 0x27249));
        assert_eq!(r.module, "/lib/x86_64-linux-gnu/libc.so.6");
        assert!(parse("    #0 (allocation stack not recorded)").is_none());
        assert!(parse("Direct leak of 8 byte(s) in 1 object(s) allocated from:").is_none());
        assert!(parse("    #1 0x1 in main /x.c:3:1").is_none());
        let r = parse("    #0 0x10  (/a/b.so+0x10) (BuildId: 0a1b)").unwrap();
        assert_eq!(
            (r.module, r.offset, r.rest),
            ("/a/b.so", 0x10, " (BuildId: 0a1b)")
        );
    }

    #[test]
    fn unknown_modules_pass_through() {
        let mut s = Symbolizer::default();
        let t = "Direct leak\n    #0 0x10  (/nonexistent/lib.so+0x10)\n\n";
        assert_eq!(s.text(t), t);
    }
}
