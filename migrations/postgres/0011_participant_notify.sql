-- Waiting for a change (§5): a front end holds `GET …/participants/{id}?
-- wait_seconds=N&status=S` open, and the replica holding it must learn that
-- the participant's status changed, whichever replica changed it.
--
-- Every status change writes a routing event in its own transaction; this
-- trigger turns each event into a notification on channel
-- `allot_participants`, delivered to every replica as the transaction
-- commits (payload: the experiment id, one space, the participant id).
-- Replicas also re-read the statuses of the participants they wait on
-- every second, in case a notification is lost while their listening
-- connection is down.
CREATE FUNCTION notify_participant_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('allot_participants', NEW.experiment_id || ' ' || NEW.participant_id);
    RETURN NULL;
END
$$;

CREATE TRIGGER routing_event_notifies AFTER INSERT ON routing_events
    FOR EACH ROW EXECUTE FUNCTION notify_participant_changed();
