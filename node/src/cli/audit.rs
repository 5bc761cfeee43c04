//! `unseen audit …`: show and verify the hash-chained audit log.

use std::process::ExitCode;

use super::*;

pub(super) async fn audit_command(command: AuditCommand) -> Result<ExitCode, String> {
    match command {
        AuditCommand::Verify { target } => {
            let mut client = connect(&target).await?;
            let reply = client
                .verify_audit(crate::proto::VerifyAuditRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            for anchor in &reply.anchors {
                println!("  {anchor}");
            }
            // Each node keeps its own log: say whose this is.
            let node = &target.node;
            if reply.intact {
                println!("audit log of {node} intact: {} records", reply.records);
                Ok(ExitCode::SUCCESS)
            } else {
                Err(format!(
                    "audit log of {node} broken at record {} of {}: {}",
                    reply.first_broken, reply.records, reply.reason
                ))
            }
        }
        AuditCommand::Show {
            target,
            job,
            since,
            limit,
            follow,
        } => {
            let mut client = connect(&target).await?;
            let mut request = crate::proto::ListAuditRequest {
                job_id: job.unwrap_or_default(),
                from_seq: 0,
                since_unix_ms: since_unix_ms(since),
                limit: 0,
            };
            let mut left = limit.unwrap_or(u64::MAX);
            // Page by page, so a log of any length prints; then, when following, the records
            // appended since, once a second.
            while left > 0 {
                request.limit = left.min(500) as u32;
                let page = client
                    .list_audit(request.clone())
                    .await
                    .map_err(status_error)?
                    .into_inner();
                for r in &page.records {
                    print_record(r, target.json);
                }
                left -= page.records.len() as u64;
                request.from_seq = page.next_seq;
                if !page.more {
                    if !follow {
                        break;
                    }
                    std::io::stdout().flush().map_err(|e| e.to_string())?;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_record(r: &crate::proto::AuditRecord, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({"seq": r.seq, "unix_ms": r.unix_ms, "event": r.event, "job_id": r.job_id,
                "peer": r.peer, "detail": serde_json::from_str::<serde_json::Value>(&r.detail_json).unwrap_or_default(), "hash": r.hash})
        );
    } else {
        println!(
            "{:>6} {} {:<16} {:<12} {} {}",
            r.seq, r.unix_ms, r.event, r.peer, r.job_id, r.detail_json
        );
    }
}
