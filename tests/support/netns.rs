//! A network namespace of the test's own, for network faults: chtail and
//! the server both run inside it and talk over its loopback, and
//! `iptables` rules inside it drop packets (all of them, replies only, or a
//! random share). Nothing outside the namespace is touched.

use std::process::{Command, Output};

pub(crate) struct Netns {
    pub name: String,
}

impl Netns {
    /// A fresh namespace with its loopback up, or why one cannot be made
    /// here (not root, no `ip`, no `iptables`, a kernel without them).
    pub(crate) fn new(tag: &str) -> Result<Netns, String> {
        let name = format!("chtail-{}-{tag}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(Command::new("ip").args(["netns", "add", &name]))?;
        // From here, dropping it deletes the namespace.
        let ns = Netns { name };
        run(&mut ns.command("ip", &["link", "set", "lo", "up"]))?;
        // iptables must work inside it, or no fault can be made.
        run(&mut ns.command("iptables", &["-L", "OUTPUT", "-n"]))?;
        Ok(ns)
    }

    /// `program args` inside the namespace.
    pub(crate) fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]).args(args);
        c
    }

    /// Adds an OUTPUT rule (every packet on the namespace's loopback passes
    /// OUTPUT once): e.g. `["-p", "tcp", "--sport", "8123", "-j", "DROP"]`.
    pub(crate) fn drop_packets(&self, rule: &[&str]) {
        let mut args = vec!["-A", "OUTPUT"];
        args.extend_from_slice(rule);
        run(&mut self.command("iptables", &args)).expect("add an iptables rule");
    }

    /// Removes every rule added.
    pub(crate) fn heal(&self) {
        run(&mut self.command("iptables", &["-F", "OUTPUT"])).expect("flush the iptables rules");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn run(c: &mut Command) -> Result<Output, String> {
    let out = c.output().map_err(|e| format!("{c:?}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{c:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
