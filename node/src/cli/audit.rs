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
            if reply.intact {
                println!("audit log intact: {} records", reply.records);
                Ok(ExitCode::SUCCESS)
            } else {
                Err(format!(
                    "audit log broken at record {} of {}: {}",
                    reply.first_broken, reply.records, reply.reason
                ))
            }
        }
        AuditCommand::Show { target, job } => {
            let mut client = connect(&target).await?;
            let records = client
                .list_audit(crate::proto::ListAuditRequest {
                    job_id: job.unwrap_or_default(),
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .records;
            for r in &records {
                if target.json {
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
            Ok(ExitCode::SUCCESS)
        }
    }
}
