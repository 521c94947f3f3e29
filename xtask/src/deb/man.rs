//! gateway(8), written from the binary's own `--help` and each
//! subcommand's, so the page says what `--help` says by construction.
use std::path::Path;

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// The troff source of gateway(8).
pub fn page(bin: &Path) -> Result<String> {
    let version = help(bin, &["--version"])?;
    let version = version.trim();
    let top = help(bin, &["--help"])?;
    let about = top.lines().next().unwrap_or("").trim().to_owned();
    let mut sections = Vec::new();
    collect(bin, &mut Vec::new(), &top, &mut sections)?;
    Ok(render(version, &about, &top, &sections))
}

/// `gateway <args>`'s standard output.
fn help(bin: &Path, args: &[&str]) -> Result<String> {
    let out = cmd::output(cmd::new(bin).args(args))
        .with_context(|| format!("running {} {}", bin.display(), args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{} {}` exited with {}",
            bin.display(),
            args.join(" "),
            out.status
        );
    }
    String::from_utf8(out.stdout).context("--help output is not UTF-8")
}

/// The subcommands a clap help text lists under `Commands:` (not `help`).
pub fn subcommands(help_text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut inside = false;
    for line in help_text.lines() {
        if line.trim_end() == "Commands:" {
            inside = true;
            continue;
        }
        if !inside {
            continue;
        }
        // The list ends at the first line not indented (or a blank line).
        if !line.starts_with("  ") {
            break;
        }
        // Wrapped description lines are indented further than names.
        if line.starts_with("   ") {
            continue;
        }
        if let Some(name) = line.split_whitespace().next()
            && name != "help"
        {
            names.push(name.to_owned());
        }
    }
    names
}

/// Every subcommand's help, depth first: (`run`, help), (`ca init`, help)…
fn collect(
    bin: &Path,
    path: &mut Vec<String>,
    text: &str,
    out: &mut Vec<(String, String)>,
) -> Result<()> {
    for name in subcommands(text) {
        path.push(name);
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let sub = help(bin, &args)?;
        out.push((path.join(" "), sub.clone()));
        collect(bin, path, &sub, out)?;
        path.pop();
    }
    Ok(())
}

/// Text for troff: backslashes escaped, no line read as a request.
fn escape(text: &str) -> String {
    text.lines()
        .map(|l| {
            let l = l.replace('\\', "\\e");
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn render(version: &str, about: &str, top: &str, sections: &[(String, String)]) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        ".TH GATEWAY 8 \"\" \"{}\" \"System Administration\"\n",
        escape(version)
    ));
    s.push_str(".SH NAME\ngateway \\- ");
    s.push_str(&escape(&about.to_lowercase_first()));
    s.push_str("\n.SH SYNOPSIS\n.B gateway\n.I command\n.RI [ options ]\n");
    s.push_str(".SH DESCRIPTION\n");
    s.push_str(
        "The gateway guards the device\\-facing interfaces of a Margo edge site with an eBPF \
         program and serves what devices may reach through its transparent proxy. \
         The sections below are the program's own \\fB\\-\\-help\\fR output.\n",
    );
    s.push_str(".PP\n.nf\n");
    s.push_str(&escape(top.trim_end()));
    s.push_str("\n.fi\n.SH COMMANDS\n");
    for (name, text) in sections {
        s.push_str(&format!(".SS \"gateway {}\"\n.nf\n", escape(name)));
        s.push_str(&escape(text.trim_end()));
        s.push_str("\n.fi\n");
    }
    s.push_str(
        ".SH FILES\n\
         .TP\n/etc/margo\\-gateway/gateway.yaml\n\
         The configuration the margo\\-gateway service runs with (every key is documented in it).\n\
         .TP\n/var/lib/gateway\n\
         The state directory: the site CA, the cache, the control socket.\n\
         .TP\n/var/log/gateway/audit.jsonl\n\
         The audit log, rotated by /etc/logrotate.d/margo\\-gateway.\n\
         .TP\n/sys/fs/bpf/margo\\-gateway\n\
         The pinned program and maps that keep guarding while no daemon runs.\n\
         .SH SIGNALS\n\
         SIGTERM and SIGINT stop the daemon; the kernel path stays and keeps guarding. \
         SIGHUP reloads the configuration and reopens the audit log (as \\fBgateway reload\\fR does, \
         which the unit's ExecReload runs and which, unlike the signal, reports a refused configuration); \
         SIGUSR1 reopens the audit log.\n\
         .SH EXIT STATUS\n\
         64 when the configuration is wrong (the message names the key), 2 when the command line \
         is, 3 when \\fBgateway cache verify\\fR quarantined a blob, 1 on other errors, 0 otherwise.\n\
         .SH SEE ALSO\n\
         .BR systemctl (1),\n.BR journalctl (1),\n.BR logrotate (8)\n",
    );
    s
}

trait LowerFirst {
    fn to_lowercase_first(&self) -> String;
}

impl LowerFirst for str {
    /// "Transparent egress…" reads as the NAME line's "gateway - transparent egress…".
    fn to_lowercase_first(&self) -> String {
        let mut chars = self.chars();
        match chars.next() {
            Some(c) => c.to_lowercase().chain(chars).collect(),
            None => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOP: &str = "\
Transparent egress gateway for Margo edge sites

Usage: gateway <COMMAND>

Commands:
  run           Install (or adopt) the kernel path and serve until SIGTERM. Stopping leaves the
                kernel path guarding (fail closed); see `uninstall`
  check-config  Validate a configuration file and the host it names; change nothing
  ca            The site CA that devices trust
  help          Print this message or the help of the given subcommand(s)

Options:
  -h, --help     Print help
  -V, --version  Print version
";

    #[test]
    fn subcommands_are_read_from_the_commands_list() {
        assert_eq!(subcommands(TOP), ["run", "check-config", "ca"]);
        assert!(subcommands("Usage: gateway run --config <CONFIG>\n\nOptions:\n  -c\n").is_empty());
    }

    #[test]
    fn help_text_cannot_become_troff_requests() {
        assert_eq!(escape(".config\n'x\na\\b"), "\\&.config\n\\&'x\na\\eb");
    }

    #[test]
    fn the_page_holds_every_help_text() {
        let page = render(
            "gateway 0.1.0",
            "Transparent egress gateway",
            TOP,
            &[(
                "run".into(),
                "Install\n\nUsage: gateway run --config <CONFIG>\n".into(),
            )],
        );
        assert!(page.starts_with(".TH GATEWAY 8 "));
        assert!(page.contains("gateway \\- transparent egress gateway\n"));
        assert!(page.contains(
            ".SS \"gateway run\"\n.nf\nInstall\n\nUsage: gateway run --config <CONFIG>\n.fi\n"
        ));
        assert!(page.contains("check-config  Validate"));
    }
}
