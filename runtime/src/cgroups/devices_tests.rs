use super::*;

fn deny_all() -> Rule {
    Rule { allow: false, kind: None, major: None, minor: None, access: MKNOD | READ | WRITE }
}

fn rule(allow: bool, text: &str) -> Rule {
    Rule::parse(allow, text).unwrap()
}

/// Runs a program the way the kernel would for one request (the opcodes [`program`] emits).
fn run(prog: &[Insn], kind: Kind, major: u32, minor: u32, access: u8) -> u64 {
    let ctx = [(u32::from(access) << 16) | if kind == Kind::Block { 1 } else { 2 }, major, minor];
    let mut r = [0u64; 11];
    let mut pc = 0usize;
    loop {
        let i = prog[pc];
        let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
        pc += 1;
        match i.code {
            LDX_MEM_W => {
                assert_eq!(src, 1, "loads only from the context");
                r[dst] = u64::from(ctx[i.off as usize / 4]);
            }
            ALU32_MOV_X => r[dst] = r[src] & 0xffff_ffff,
            ALU32_RSH_K => r[dst] = (r[dst] as u32 >> i.imm) as u64,
            ALU32_AND_K => r[dst] = (r[dst] as u32 & i.imm as u32) as u64,
            ALU64_MOV_K => r[dst] = i.imm as i64 as u64,
            JMP_JA => pc = (pc as i64 + i64::from(i.off)) as usize,
            JMP32_JNE_K if r[dst] as u32 != i.imm as u32 => pc = (pc as i64 + i64::from(i.off)) as usize,
            JMP32_JSET_K if r[dst] as u32 & i.imm as u32 != 0 => pc = (pc as i64 + i64::from(i.off)) as usize,
            JMP32_JNE_K | JMP32_JSET_K => {}
            JMP_EXIT => return r[0],
            other => panic!("unexpected opcode {other:#x}"),
        }
        assert!(i.code != JMP_JA || i.off >= 0, "backward jump");
    }
}

/// The rules' meaning, written plainly: per requested access, the last matching rule naming
/// it decides; no match denies.
fn reference(rules: &[Rule], kind: Kind, major: u32, minor: u32, access: u8) -> u64 {
    let ok = [MKNOD, READ, WRITE].into_iter().filter(|b| access & b != 0).all(|b| {
        rules
            .iter()
            .rev()
            .find(|r| {
                r.access & b != 0
                    && r.kind.is_none_or(|k| k == kind)
                    && r.major.is_none_or(|m| m == major)
                    && r.minor.is_none_or(|m| m == minor)
            })
            .is_some_and(|r| r.allow)
    });
    u64::from(ok)
}

#[test]
fn deny_all_encodes_to_known_bytes() {
    let prog = program(&[deny_all()]);
    let want: [(u8, u8, i16, i32); 19] = [
        (0x61, 0x12, 0, 0),
        (0xbc, 0x23, 0, 0),
        (0x74, 0x03, 0, 16),
        (0x54, 0x02, 0, 0xffff),
        (0x61, 0x14, 4, 0),
        (0x61, 0x15, 8, 0),
        (0x46, 0x03, 1, 1),
        (0x05, 0x00, 1, 0),
        (0x05, 0x00, 8, 0),
        (0x46, 0x03, 1, 2),
        (0x05, 0x00, 1, 0),
        (0x05, 0x00, 5, 0),
        (0x46, 0x03, 1, 4),
        (0x05, 0x00, 1, 0),
        (0x05, 0x00, 2, 0),
        (0xb7, 0x00, 0, 1),
        (0x95, 0x00, 0, 0),
        (0xb7, 0x00, 0, 0),
        (0x95, 0x00, 0, 0),
    ];
    let got: Vec<_> = prog.iter().map(|i| (i.code, i.regs, i.off, i.imm)).collect();
    assert_eq!(got, want);
    assert_eq!(prog[4].to_bytes(), [0x61, 0x14, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00]);
    assert_eq!(prog[3].to_bytes(), [0x54, 0x02, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00]);
    assert_eq!(std::mem::size_of::<Insn>(), 8);
}

#[test]
fn a_conditional_rule_jumps_past_itself() {
    // allow c 1:3 r: type, major and minor checks jump to the default deny.
    let prog = program(&[rule(true, "c 1:3 r")]);
    let read_block: Vec<_> = prog[9..16].iter().map(|i| (i.code, i.regs, i.off, i.imm)).collect();
    assert_eq!(
        read_block,
        [
            (0x46, 0x03, 1, 2),
            (0x05, 0x00, 5, 0),
            (0x56, 0x02, 3, 2),
            (0x56, 0x04, 2, 1),
            (0x56, 0x05, 1, 3),
            (0x05, 0x00, 1, 0),
            (0x05, 0x00, 5, 0),
        ]
    );
}

#[test]
fn programs_decide_as_the_rules_say() {
    let sets: Vec<Vec<Rule>> = vec![
        vec![deny_all()],
        rules(&[]).unwrap(),
        vec![deny_all(), rule(true, "c 1:11 r")],
        vec![deny_all(), rule(true, "c 1:11 rw"), rule(false, "c 1:11 w")],
        vec![deny_all(), rule(true, "a *:* rwm")],
        vec![rule(true, "a *:* rwm"), rule(false, "b 8:* rw"), rule(true, "b 8:1 r")],
        vec![deny_all(), rule(true, "c *:5 w"), rule(true, "b 254:* rwm"), rule(false, "b 254:0 m")],
        vec![rule(true, "c 1:3 rwm")],
    ];
    for rules in &sets {
        let prog = program(rules);
        for kind in [Kind::Block, Kind::Char] {
            for (major, minor) in [(1, 3), (1, 5), (1, 11), (8, 0), (8, 1), (136, 4), (254, 0), (254, 7), (4095, 99)] {
                for access in 1..=7 {
                    assert_eq!(
                        run(&prog, kind, major, minor, access),
                        reference(rules, kind, major, minor, access),
                        "{rules:?} {kind:?} {major}:{minor} access {access}"
                    );
                }
            }
        }
    }
}

#[test]
fn the_defaults_stay_allowed_after_a_deny_all() {
    let rules = rules(&[serde_json::from_str(r#"{"allow": false, "access": "rwm"}"#).unwrap()]).unwrap();
    let prog = program(&rules);
    assert_eq!(run(&prog, Kind::Char, 1, 3, READ | WRITE), 1, "/dev/null");
    assert_eq!(run(&prog, Kind::Char, 136, 0, READ | WRITE), 1, "a pty");
    assert_eq!(run(&prog, Kind::Block, 8, 0, MKNOD), 1, "mknod of anything");
    assert_eq!(run(&prog, Kind::Block, 8, 0, READ), 0, "the host's disk");
    assert_eq!(run(&prog, Kind::Char, 1, 11, WRITE), 0, "/dev/kmsg");
}

#[test]
fn spec_rules_convert_or_name_the_bad_one() {
    let parse = |json: &str| -> Vec<LinuxDeviceCgroup> { serde_json::from_str(json).unwrap() };
    let got = rules(&parse(
        r#"[{"allow": true, "type": "c", "major": 10, "minor": -1, "access": "rw"},
                               {"allow": true, "type": "p", "access": "rwm"}]"#,
    ))
    .unwrap();
    assert_eq!(
        got[0],
        Rule { allow: true, kind: Some(Kind::Char), major: Some(10), minor: None, access: READ | WRITE }
    );
    assert_eq!(got.len(), 1 + super::super::values::DEFAULT_DEVICE_RULES.len(), "a FIFO rule is no device rule");
    let err = rules(&parse(r#"[{"allow": true}, {"allow": true, "type": "c", "access": "rx"}]"#)).unwrap_err();
    assert_eq!(err.to_string(), r#"linux.resources.devices[1]: access "rx" is not made of r, w and m"#);
    let err = rules(&parse(r#"[{"allow": true, "type": "b", "major": 99999999999}]"#)).unwrap_err();
    assert_eq!(err.to_string(), "linux.resources.devices[0]: major 99999999999 is not a device number");
    assert_eq!(rules(&parse(r#"[{"allow": true, "type": "a"}]"#)).unwrap()[0].access, MKNOD | READ | WRITE);
}

/// Root tests against the kernel: the verifier accepts the programs and the device checks of
/// a process in the cgroup follow them. On this host's hybrid layout the cgroup2 hierarchy at
/// /sys/fs/cgroup/unified runs device programs as a v2-only host does.
mod kernel {
    use std::ffi::CString;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    use super::*;
    use crate::cgroups::Layout;

    struct TestCgroup(PathBuf);

    impl TestCgroup {
        fn new(name: &str) -> TestCgroup {
            assert_eq!(unsafe { libc::geteuid() }, 0, "needs root: run through scripts/test");
            let layout = Layout::detect().expect("a cgroup hierarchy");
            let unified = layout.unified().expect("this test needs a cgroup2 hierarchy (hybrid or unified host)");
            let dir = unified.mountpoint.join(format!("berth-devtest-{}-{name}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            TestCgroup(dir)
        }

        /// Runs `script` with sh inside the cgroup; Ok or the shell's complaint.
        fn sh(&self, script: &str) -> Result<(), String> {
            let procs = CString::new(self.0.join("cgroup.procs").into_os_string().into_encoded_bytes()).unwrap();
            let mut cmd = Command::new("/bin/sh");
            cmd.args(["-c", script]).stdin(std::process::Stdio::null());
            // SAFETY: open, write and close are async-signal-safe; nothing is allocated.
            unsafe {
                cmd.pre_exec(move || {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                    if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(io::Error::last_os_error());
                    }
                    libc::close(fd);
                    Ok(())
                })
            };
            let out = cmd.output().unwrap();
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        }

        fn denied(&self, script: &str) -> bool {
            match self.sh(script) {
                Ok(()) => false,
                Err(e) => {
                    assert!(e.contains("Operation not permitted"), "{script}: failed otherwise: {e}");
                    true
                }
            }
        }
    }

    impl Drop for TestCgroup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }

    #[test]
    #[ignore = "needs root"]
    fn the_kernel_enforces_the_program() {
        let cg = TestCgroup::new("enforce");
        let deny: Vec<LinuxDeviceCgroup> = serde_json::from_str(r#"[{"allow": false, "access": "rwm"}]"#).unwrap();
        attach(&cg.0, &program(&rules(&deny).unwrap())).unwrap();
        assert_eq!(attached_count(&cg.0).unwrap(), 1);
        assert_eq!(cg.sh("exec 3<>/dev/null; head -c1 /dev/zero >/dev/null"), Ok(()), "default devices");
        assert!(cg.denied("exec 3</dev/kmsg"), "/dev/kmsg is not in the rules");
        assert!(cg.denied("exec 3</dev/vda"), "the host's disk");
        let tmp = tempfile::tempdir().unwrap();
        let node = tmp.path().join("sda");
        // mknod stays allowed (the OCI defaults), opening the node does not.
        let script = format!("mknod {0} b 8 0 && exec 3<{0}", node.display());
        assert!(cg.denied(&script), "a disk node made in the container");
        assert!(node.exists(), "mknod itself was allowed");

        // An update replaces the program: now /dev/kmsg may be read but not written.
        let read_kmsg: Vec<LinuxDeviceCgroup> = serde_json::from_str(
            r#"[{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 1, "minor": 11, "access": "rw"},
                {"allow": false, "type": "c", "major": 1, "minor": 11, "access": "w"}]"#,
        )
        .unwrap();
        attach(&cg.0, &program(&rules(&read_kmsg).unwrap())).unwrap();
        assert_eq!(attached_count(&cg.0).unwrap(), 1, "the previous program was detached");
        assert_eq!(cg.sh("exec 3</dev/kmsg"), Ok(()));
        assert!(cg.denied("exec 3>>/dev/kmsg"));
        assert!(cg.denied("exec 3</dev/vda"));
    }

    #[test]
    #[ignore = "needs root"]
    fn the_verifier_accepts_every_shape() {
        let cg = TestCgroup::new("shapes");
        for rules in [
            vec![],
            vec![Rule { allow: true, kind: None, major: None, minor: None, access: MKNOD | READ | WRITE }],
            vec![deny_all(), rule(true, "c *:5 w"), rule(true, "b 254:* rwm"), rule(false, "b 254:0 m")],
            (0..300).map(|i| rule(i % 3 != 0, &format!("c {}:{} rw", i % 7, i))).collect(),
        ] {
            attach(&cg.0, &program(&rules)).unwrap_or_else(|e| panic!("{rules:?}: {e}"));
        }
        assert!(cg.denied("exec 3</dev/kmsg"), "c 1:11 matches none of the last rules");
    }
}
