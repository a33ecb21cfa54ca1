"""Evidence: the durable Postgres ledger of measurements and stage decisions (``ledger``) and the Markdown report
for the release PR (``report``). Importing creates no engine and connects nowhere."""
