"""The two load paths behind `warehouse.loaders.partition_load`.

`specs` says what each transform output means for the warehouse (model, natural key, whether a dimension
keeps history, dimension references, partition scope) and `history` states the rules of dimension history;
`portable` (ORM bulk_create, any database) and `postgres` (COPY into a temporary table, set-wise merge) both
apply exactly those semantics. docs/loading.md explains why they are equivalent.
"""
