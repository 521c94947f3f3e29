//! Policy routing that delivers redirected packets locally.
//!
//! Packets the program assigns to a socket keep their original destination
//! address; without a local route they would be forwarded (or dropped) by
//! the IP layer before reaching the socket. The program marks them, and
//! `fwmark MARK lookup TABLE` with `local default dev lo` in TABLE makes
//! them local, v4 and v6. Only marked packets are affected.

use std::net::{Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt as _;
use netlink_packet_route::{
    route::{RouteMessage, RouteProtocol, RouteScope, RouteType},
    rule::{RuleAction, RuleMessage},
};
use rtnetlink::{Handle, IpVersion};

use super::EbpfError;

/// The kernel's own routing protocol id for routes added by a daemon
/// ("static" in iproute2's rt_protos).
const PROTO_STATIC: RouteProtocol = RouteProtocol::Static;

#[derive(Clone, Copy, Debug)]
pub struct Routing {
    pub mark: u32,
    pub table: u32,
    pub priority: u32,
}

impl Routing {
    /// Adds the rules and routes; those already present (a previous daemon
    /// that crashed) are kept as they are.
    pub async fn install(&self) -> Result<(), EbpfError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(routing_err)?;
        let task = tokio::spawn(conn);
        let result = self.install_with(&handle).await;
        task.abort();
        result
    }

    async fn install_with(&self, handle: &Handle) -> Result<(), EbpfError> {
        let lo = loopback_index()?;
        for v6 in [false, true] {
            let rule = self.rule_message(handle, v6);
            if !self.rule_exists(handle, v6).await? {
                let mut req = handle.rule().add();
                *req.message_mut() = rule;
                req.execute().await.map_err(routing_err)?;
            }
            let mut req = handle.route().add();
            *req.message_mut() = self.route_message(handle, v6, lo);
            // Replace: idempotent whether or not the route is there.
            req.replace().execute().await.map_err(routing_err)?;
        }
        Ok(())
    }

    /// Removes the rules and routes; absent ones are not an error.
    pub async fn remove(&self) -> Result<(), EbpfError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(routing_err)?;
        let task = tokio::spawn(conn);
        let result = self.remove_with(&handle).await;
        task.abort();
        result
    }

    async fn remove_with(&self, handle: &Handle) -> Result<(), EbpfError> {
        let lo = loopback_index()?;
        for v6 in [false, true] {
            while self.rule_exists(handle, v6).await? {
                let msg = self.rule_message(handle, v6);
                handle
                    .rule()
                    .del(msg)
                    .execute()
                    .await
                    .map_err(routing_err)?;
            }
            let msg = self.route_message(handle, v6, lo);
            match handle.route().del(msg).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => {}
                Err(e) => return Err(routing_err(e)),
            }
        }
        Ok(())
    }

    /// Whether our rule (same mark, table and priority) is installed.
    pub async fn rule_exists(&self, handle: &Handle, v6: bool) -> Result<bool, EbpfError> {
        use netlink_packet_route::rule::RuleAttribute as A;
        let version = if v6 { IpVersion::V6 } else { IpVersion::V4 };
        let mut rules = handle.rule().get(version).execute();
        while let Some(rule) = rules.try_next().await.map_err(routing_err)? {
            let attrs = &rule.attributes;
            let has = |want: &A| attrs.iter().any(|a| a == want);
            let table_ok = has(&A::Table(self.table)) || u32::from(rule.header.table) == self.table;
            if has(&A::FwMark(self.mark)) && has(&A::Priority(self.priority)) && table_ok {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn rule_message(&self, handle: &Handle, v6: bool) -> RuleMessage {
        let req = handle.rule().add();
        let mut req = if v6 {
            let mut r = req.v6().fw_mark(self.mark).priority(self.priority);
            r = r.table_id(self.table).action(RuleAction::ToTable);
            r.message_mut().clone()
        } else {
            let mut r = req.v4().fw_mark(self.mark).priority(self.priority);
            r = r.table_id(self.table).action(RuleAction::ToTable);
            r.message_mut().clone()
        };
        // Always carry the full table id as an attribute too, as ip(8) does.
        if !req
            .attributes
            .iter()
            .any(|a| matches!(a, netlink_packet_route::rule::RuleAttribute::Table(_)))
        {
            req.attributes
                .push(netlink_packet_route::rule::RuleAttribute::Table(self.table));
        }
        req
    }

    fn route_message(&self, handle: &Handle, v6: bool, lo: u32) -> RouteMessage {
        let base = handle
            .route()
            .add()
            .table_id(self.table)
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .protocol(PROTO_STATIC)
            .output_interface(lo);
        if v6 {
            let mut r = base.v6().destination_prefix(Ipv6Addr::UNSPECIFIED, 0);
            r.message_mut().clone()
        } else {
            let mut r = base.v4().destination_prefix(Ipv4Addr::UNSPECIFIED, 0);
            r.message_mut().clone()
        }
    }
}

fn loopback_index() -> Result<u32, EbpfError> {
    nix::net::if_::if_nametoindex("lo")
        .map_err(|e| EbpfError::Routing(format!("no loopback interface: {e}")))
}

fn routing_err(e: impl std::fmt::Display) -> EbpfError {
    EbpfError::Routing(e.to_string())
}
