/**
 * Input for relay-compiler (test/clients-relay.test.ts): one row of the dashboard, refetchable
 * on its own through `Query.node`.
 */
const graphql = String.raw;

export const DashboardEventRowFragment = graphql`
  fragment DashboardEventRow_event on AuditEvent
  @refetchable(queryName: "DashboardEventRowRefetchQuery") {
    id
    eventId
    occurredAt
    eventType
    outcome
    correlationId
    actor {
      type
      actorId
    }
    resource {
      type
      resourceId
    }
  }
`;
