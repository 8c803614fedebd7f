-- The node of a cluster that holds each attendance row open (NULL on a single server), so
-- that a node starting closes only its own rows left open, and the rows of a node that died
-- are closed by the others once its lease has ended, never the rows of live nodes.
ALTER TABLE attendance ADD COLUMN node TEXT;
CREATE INDEX attendance_open_node ON attendance(node) WHERE left_at IS NULL;
