/**
 * Input for relay-compiler (test/clients-relay.test.ts): a dashboard's paginated event list.
 * The compiler reads the `graphql` template below; at run time the tag is only String.raw.
 */
const graphql = String.raw;

export const DashboardEventsFragment = graphql`
  fragment DashboardEvents_query on Query
  @refetchable(queryName: "DashboardEventsPaginationQuery")
  @argumentDefinitions(
    count: { type: "Int", defaultValue: 20 }
    cursor: { type: "String" }
    filter: { type: "AuditEventFilter" }
  ) {
    auditEvents(first: $count, after: $cursor, filter: $filter)
    @connection(key: "DashboardEvents_auditEvents", filters: ["filter"]) {
      edges {
        node {
          id
          ...DashboardEventRow_event
        }
      }
    }
  }
`;
